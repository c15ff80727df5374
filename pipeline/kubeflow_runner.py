"""Compiles the pipeline for Kubeflow Pipelines (v2) and writes its daily schedule.

  python -m pipeline.kubeflow_runner --pipeline_root=gs://BUCKET/eta/root \
      --data_root=gs://BUCKET/eta/logs --serving_model_dir=gs://BUCKET/eta/serving \
      --image=REGISTRY/eta-ctr:TAG --output_dir=DIR

writes `DIR/eta-ctr.json` (the pipeline spec, compiled by KubeflowV2DagRunner
without a cluster) and `DIR/eta-ctr-recurring-run.json` (the recurring-run
definition: a KFP cron expression and the `kfp recurring-run create` command).
Every component runs in `--image`, which must hold this repository at
`--image_repo_root` (the schema file is read there) and the pinned Python
stack. No --date: each scheduled run takes the newest daily span.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Optional, Sequence

from absl import app
from absl import flags

from pipeline import configs
from pipeline import pipeline as pipeline_lib
from preprocessing import environment
from preprocessing import features
from preprocessing import flag_parsing

# KFP schedules use 6-field cron expressions (seconds first, robfig/cron).
DEFAULT_KFP_CRON = "0 0 3 * * *"
DEFAULT_IMAGE_REPO_ROOT = "/app"
_CRON_FIELD = re.compile(r"[0-9*?,/\-LW#A-Z]+")

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when run as a program, so that tests (and other entry
  # points) can import this module beside the other runner.
  flags.DEFINE_string("pipeline_root", None, "Artifact root (gs://...).")
  flags.DEFINE_string("data_root", None, "Raw logs root (gs://...).")
  flags.DEFINE_string("serving_model_dir", None, "Base directory TF Serving watches.")
  flags.DEFINE_string("image", None, "Container image of every component.")
  flags.DEFINE_string("output_dir", ".", "Where to write the spec and the schedule.")
  flags.DEFINE_string("pipeline_name", "eta-ctr", "Pipeline name ([a-z0-9-]).")
  flags.DEFINE_string("image_repo_root", DEFAULT_IMAGE_REPO_ROOT, "Repository path in the image.")
  flags.DEFINE_string("model", "eta", "Model variant.")
  flags.DEFINE_integer("train_steps", 1000, "Trainer steps.")
  flags.DEFINE_integer(
      "max_seq_len", features.DEFAULT_MAX_SEQ_LEN, "History length (must match the schema)."
  )
  flags.DEFINE_integer("rolling_window_days", 7, "Days of impressions per run.")
  flags.DEFINE_string("cron", DEFAULT_KFP_CRON, "KFP cron expression (6 fields, UTC).")
  flags.DEFINE_string("experiment", "eta-ctr", "KFP experiment of the recurring run.")
  flags.DEFINE_multi_string(
      "beam_pipeline_args", None,
      "Beam options of every Beam component (repeat the flag), e.g. "
      "--beam_pipeline_args=--runner=DataflowRunner. Default: DirectRunner, "
      "multi_processing, 2 workers.",
  )


def check_kfp_cron(expression: str) -> str:
  """Refuses anything but a 6-field cron expression (KFP's format)."""
  fields = expression.split()
  if len(fields) != 6 or not all(_CRON_FIELD.fullmatch(f) for f in fields):
    raise ValueError(
        f"cron {expression!r} must have 6 fields (seconds minutes hours "
        "day-of-month month day-of-week), as Kubeflow Pipelines expects"
    )
  return expression


def compile_pipeline(
    config: configs.PipelineConfig, image: str, output_file: str
) -> dict:
  """Compiles `create_pipeline(config)` to a KFP v2 pipeline spec; returns it."""
  # TFX loads here, not at import (about 15 s): --help and config errors
  # answer at once.
  from tfx import v1 as tfx  # pylint: disable=g-import-not-at-top

  runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
      config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(
          default_image=image
      ),
      output_dir=os.path.dirname(output_file) or ".",
      output_filename=os.path.basename(output_file),
  )
  runner.run(pipeline_lib.create_pipeline(config))
  with open(output_file) as f:
    return json.load(f)


def recurring_run(
    pipeline_name: str, spec_file: str, cron: str, experiment: str
) -> dict:
  """The recurring-run definition and the command that registers it."""
  check_kfp_cron(cron)
  job_name = f"{pipeline_name}-daily"
  return {
      "job_name": job_name,
      "experiment_name": experiment,
      "cron_expression": cron,
      # One run at a time; a paused schedule does not backfill missed days
      # (the next run takes the newest span, which holds the rolling window).
      "max_concurrency": 1,
      "no_catchup": True,
      "pipeline_package_path": spec_file,
      "command": (
          f"kfp recurring-run create --experiment-name={experiment} "
          f"--job-name={job_name} --cron-expression='{cron}' "
          f"--max-concurrency=1 --no-catchup --pipeline-package-path={spec_file}"
      ),
  }


def main(argv: Sequence[str]) -> Optional[int]:
  del argv
  environment.check_environment()
  for name in ("pipeline_root", "data_root", "serving_model_dir", "image"):
    if not getattr(FLAGS, name):
      raise app.UsageError(f"--{name} is required")
  try:
    config = configs.PipelineConfig(
        pipeline_name=FLAGS.pipeline_name,
        pipeline_root=FLAGS.pipeline_root,
        data_root=FLAGS.data_root,
        serving_model_dir=FLAGS.serving_model_dir,
        **configs.trainer_settings({
            "model": FLAGS.model,
            "train_steps": FLAGS.train_steps,
            "max_seq_len": FLAGS.max_seq_len,
        }),
        rolling_window_days=FLAGS.rolling_window_days,
        schema_path=os.path.join(FLAGS.image_repo_root, "pipeline", "schema", "schema.pbtxt"),
        beam_pipeline_args=tuple(FLAGS.beam_pipeline_args or configs.DEFAULT_BEAM_ARGS),
    )
    # The image holds this checked-in schema at --image_repo_root.
    configs.check_schema_bound(config, configs.DEFAULT_SCHEMA_PATH)
  except configs.ConfigError as error:
    print(f"kubeflow_runner: error: {error}", file=sys.stderr)
    return 1
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  spec_file = os.path.join(FLAGS.output_dir, f"{config.pipeline_name}.json")
  compile_pipeline(config, FLAGS.image, spec_file)
  schedule = recurring_run(config.pipeline_name, spec_file, FLAGS.cron, FLAGS.experiment)
  schedule_file = os.path.join(FLAGS.output_dir, f"{config.pipeline_name}-recurring-run.json")
  with open(schedule_file, "w") as f:
    json.dump(schedule, f, indent=2)
  print(f"pipeline spec: {spec_file}\nrecurring run: {schedule_file}\n{schedule['command']}")
  return 0


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=flag_parsing.parse_flags)
