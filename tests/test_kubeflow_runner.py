"""Kubeflow: the pipeline compiles to a KFP v2 spec with our components,
their dependencies, the image and the Beam args; the schedule is valid."""

import json

import pytest

from pipeline import configs
from pipeline import kubeflow_runner
from pipeline import pipeline as pipeline_lib

IMAGE = "registry.example.com/eta-ctr:test"
BEAM_ARGS = ("--runner=DataflowRunner", "--region=europe-west1", "--project=p")


@pytest.mark.e2e
def test_compiled_spec(tmp_path):
  config = configs.PipelineConfig(
      pipeline_root="gs://bucket/root", data_root="gs://bucket/logs",
      serving_model_dir="gs://bucket/serving", schema_path="/app/pipeline/schema/schema.pbtxt",
      beam_pipeline_args=BEAM_ARGS, model_config={"model": "sdim"},
      train_config={"train_steps": 123})
  spec = kubeflow_runner.compile_pipeline(config, IMAGE, str(tmp_path / "spec.json"))
  pipeline_spec = spec["pipelineSpec"]
  assert pipeline_spec["pipelineInfo"]["name"] == "eta-ctr"
  tasks = pipeline_spec["root"]["dag"]["tasks"]
  components = {
      pipeline_lib.EXAMPLE_GEN, pipeline_lib.STATISTICS_GEN, pipeline_lib.SCHEMA_GEN,
      pipeline_lib.EXAMPLE_VALIDATOR, pipeline_lib.DATA_GATE, pipeline_lib.TRANSFORM,
      pipeline_lib.TRAINER, pipeline_lib.EVALUATOR, pipeline_lib.INFRA_VALIDATOR,
      pipeline_lib.PUSHER}
  assert components <= set(tasks)
  resolvers = set(tasks) - components
  assert resolvers and all(r.startswith(pipeline_lib.MODEL_RESOLVER) for r in resolvers)

  def deps(name):
    return set(tasks[name].get("dependentTasks", []))

  # Training waits for the data gate; pushing waits for both blessings.
  assert pipeline_lib.DATA_GATE in deps(pipeline_lib.TRANSFORM)
  assert pipeline_lib.EXAMPLE_VALIDATOR in deps(pipeline_lib.DATA_GATE)
  assert pipeline_lib.TRANSFORM in deps(pipeline_lib.TRAINER)
  assert {pipeline_lib.EVALUATOR, pipeline_lib.INFRA_VALIDATOR} <= deps(pipeline_lib.PUSHER)
  assert pipeline_lib.TRAINER in deps(pipeline_lib.EVALUATOR)
  assert any(d.startswith(pipeline_lib.MODEL_RESOLVER) for d in deps(pipeline_lib.EVALUATOR))
  assert any(d.startswith(pipeline_lib.MODEL_RESOLVER) for d in deps(pipeline_lib.TRAINER))

  executors = pipeline_spec["deploymentSpec"]["executors"]
  containers = {k: v["container"] for k, v in executors.items() if "container" in v}
  assert {c["image"] for c in containers.values()} == {IMAGE}
  for component in (pipeline_lib.EXAMPLE_GEN, pipeline_lib.STATISTICS_GEN,
                    pipeline_lib.TRANSFORM, pipeline_lib.EVALUATOR):
    args = containers[f"{component}_executor"]["args"]
    assert all(a in args for a in BEAM_ARGS), (component, args)
  text = json.dumps(spec)
  assert pipeline_lib.RUN_FN in text and pipeline_lib.PREPROCESSING_FN in text
  assert '\\"model\\": \\"sdim\\"' in text or '"model": "sdim"' in text
  assert "pipeline.components.DataGate" in text and "pipeline.components.OfflineInfraValidator" in text
  assert "gs://bucket/serving" in text and "/app/pipeline/schema/schema.pbtxt" in text


def test_recurring_run_definition():
  run = kubeflow_runner.recurring_run("eta-ctr", "out/eta-ctr.json", "0 0 3 * * *", "eta")
  assert run["cron_expression"] == "0 0 3 * * *"
  assert run["max_concurrency"] == 1 and run["no_catchup"] is True
  assert "--cron-expression='0 0 3 * * *'" in run["command"]
  assert "--pipeline-package-path=out/eta-ctr.json" in run["command"]


@pytest.mark.parametrize("cron", ["0 3 * * *", "0 0 3 * * * *", "0 0 3 * * ;rm"])
def test_bad_cron_is_refused(cron):
  with pytest.raises(ValueError, match="6 fields"):
    kubeflow_runner.check_kfp_cron(cron)
