"""What a pipeline run did, read back from ML Metadata and the artifacts.

Used by the local runner to print where the model was pushed (or why not)
and its metrics against the baseline, and by the e2e tests. Everything comes
from MLMD and the Evaluator's output; nothing is inferred.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Optional

from google.protobuf import text_format

from pipeline import pipeline as pipeline_lib

# MLMD context types TFX's portable orchestration writes.
_PIPELINE_RUN_CONTEXT = "pipeline_run"
_NODE_CONTEXT = "node"
HEADLINE_METRICS = (
    "auc", "gauc", "binary_crossentropy", "calibration", "example_count",
    "mean_label", "mean_prediction",
)


@dataclasses.dataclass
class RunReport:
  """One run. `states`: node id -> MLMD execution state name (COMPLETE,
  CACHED, FAILED ...) for the nodes that ran; `metrics`: model name
  ('candidate', 'baseline') -> overall-slice metric name -> value."""

  run_id: str
  states: dict[str, str]
  pushed: bool = False
  pushed_destination: str = ""
  model_blessed: Optional[bool] = None
  infra_blessed: Optional[bool] = None
  metrics: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
  validation_failures: list[str] = dataclasses.field(default_factory=list)
  infra_reasons: list[str] = dataclasses.field(default_factory=list)

  def why_not_pushed(self) -> str:
    if self.pushed:
      return ""
    failed = [n for n, s in self.states.items() if s == "FAILED"]
    if failed == [pipeline_lib.DATA_GATE]:
      return "the data gate stopped the run before training (input anomalies or rejected rows; see the error below)"
    if failed:
      return f"the run failed at {', '.join(failed)}"
    if self.model_blessed is False:
      return "the Evaluator did not bless the model: " + (
          "; ".join(self.validation_failures) or "thresholds not met"
      )
    if self.infra_blessed is False:
      return "offline infra validation failed: " + "; ".join(self.infra_reasons)
    if pipeline_lib.PUSHER not in self.states:
      return "the run stopped before the Pusher"
    return "the Pusher did not push"

  def format(self) -> str:
    lines = [f"run {self.run_id}"]
    lines.append("  " + ", ".join(f"{n}={s}" for n, s in self.states.items()))
    if self.pushed:
      lines.append(f"PUSHED to {self.pushed_destination}")
    else:
      lines.append(f"NOT PUSHED: {self.why_not_pushed()}")
    if self.metrics:
      names = [m for m in HEADLINE_METRICS if any(m in v for v in self.metrics.values())]
      models = sorted(self.metrics, key=lambda m: (m != "candidate", m))
      lines.append("  metric                 " + "".join(f"{m:>14}" for m in models))
      for name in names:
        cells = "".join(
            f"{self.metrics[m][name]:>14.4f}" if name in self.metrics[m] else f"{'-':>14}"
            for m in models
        )
        lines.append(f"  {name:<22} {cells}")
    return "\n".join(lines)


def connect(metadata_path: str):
  # ML Metadata (~0.5 s) loads here, not at import: the local runner's --help
  # and config errors answer first.
  from ml_metadata import metadata_store  # pylint: disable=g-import-not-at-top
  from ml_metadata.proto import metadata_store_pb2  # pylint: disable=g-import-not-at-top

  config = metadata_store_pb2.ConnectionConfig()
  config.sqlite.filename_uri = metadata_path
  config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
  return metadata_store.MetadataStore(config)


def run_ids(store) -> list[str]:
  """Run ids, oldest first."""
  contexts = store.get_contexts_by_type(_PIPELINE_RUN_CONTEXT)
  return [c.name for c in sorted(contexts, key=lambda c: (c.create_time_since_epoch, c.id))]


def _state_name(execution) -> str:
  # Lazy as in connect().
  from ml_metadata.proto import metadata_store_pb2  # pylint: disable=g-import-not-at-top

  return metadata_store_pb2.Execution.State.Name(execution.last_known_state)


def node_executions(store, pipeline_name: str, run_id: str) -> dict[str, Any]:
  """node id -> its execution in the run (the latest if it ran twice)."""
  run = store.get_context_by_type_and_name(_PIPELINE_RUN_CONTEXT, run_id)
  if run is None:
    raise ValueError(f"no run {run_id!r} in ML Metadata")
  in_run = {e.id: e for e in store.get_executions_by_context(run.id)}
  result = {}
  prefix = f"{pipeline_name}."
  for context in store.get_contexts_by_type(_NODE_CONTEXT):
    if not context.name.startswith(prefix):
      continue
    node_id = context.name[len(prefix):]
    mine = [
        in_run[e.id] for e in store.get_executions_by_context(context.id)
        if e.id in in_run
    ]
    if mine:
      result[node_id] = max(mine, key=lambda e: (e.create_time_since_epoch, e.id))
  return result


def output_artifacts(store, execution) -> dict[str, list[Any]]:
  """output key -> artifacts of an execution."""
  # Lazy as in connect().
  from ml_metadata.proto import metadata_store_pb2  # pylint: disable=g-import-not-at-top

  keys: dict[int, str] = {}
  for event in store.get_events_by_execution_ids([execution.id]):
    if event.type == metadata_store_pb2.Event.OUTPUT:
      key = next((s.key for s in event.path.steps if s.HasField("key")), "")
      keys[event.artifact_id] = key
  result: dict[str, list[Any]] = {}
  for artifact in store.get_artifacts_by_id(list(keys)):
    result.setdefault(keys[artifact.id], []).append(artifact)
  return result


def _int_property(artifact, name: str) -> Optional[int]:
  if name in artifact.custom_properties:
    return artifact.custom_properties[name].int_value
  return None


def overall_metrics(evaluation_uri: str) -> dict[str, dict[str, float]]:
  """model name -> metric -> value, overall slice, no diffs, from TFMA output."""
  # TFMA (TensorFlow and Beam, seconds) only once there is a run to report.
  import tensorflow_model_analysis as tfma  # pylint: disable=g-import-not-at-top

  result: dict[str, dict[str, float]] = {}
  for metrics_for_slice in tfma.load_metrics(evaluation_uri):
    if metrics_for_slice.slice_key.single_slice_keys:
      continue
    for entry in metrics_for_slice.metric_keys_and_values:
      if entry.key.is_diff:
        continue
      if entry.value.HasField("double_value"):
        model = entry.key.model_name or "candidate"
        result.setdefault(model, {})[entry.key.name] = entry.value.double_value.value
  return result


def validation_failures(evaluation_uri: str) -> list[str]:
  # Lazy as in overall_metrics().
  import tensorflow_model_analysis as tfma  # pylint: disable=g-import-not-at-top

  result = tfma.load_validation_result(evaluation_uri)
  failures = []
  for per_slice in result.metric_validations_per_slice:
    where = tfma.slicer.stringify_slice_key(
        tfma.slicer.deserialize_slice_key(per_slice.slice_key)
    )
    for failure in per_slice.failures:
      kind = "change vs baseline" if failure.metric_key.is_diff else "value"
      failures.append(
          f"{failure.metric_key.name} ({kind}, {where}) = "
          f"{failure.metric_value.double_value.value:.4f} fails "
          + text_format.MessageToString(failure.metric_threshold, as_one_line=True)
      )
  return failures


_UNFINISHED_STATES = ("NEW", "RUNNING")


def report(
    metadata_path: str,
    pipeline_name: str,
    run_id: Optional[str] = None,
    run_failed: bool = False,
) -> RunReport:
  """Reads one run (default: the latest) back from MLMD.

  `run_failed`: the orchestrator raised. A component that raised stays
  RUNNING in MLMD (the local orchestrator does not publish the failure of
  every executor, e.g. ExampleGen's), so the report then shows its
  unfinished executions as FAILED.
  """
  store = connect(metadata_path)
  ids = run_ids(store)
  if not ids:
    raise ValueError(f"no pipeline run recorded in {metadata_path}")
  run_id = run_id or ids[-1]
  executions = node_executions(store, pipeline_name, run_id)
  states = {n: _state_name(e) for n, e in sorted(
      executions.items(), key=lambda item: item[1].create_time_since_epoch)}
  if run_failed:
    states = {n: "FAILED" if s in _UNFINISHED_STATES else s for n, s in states.items()}
  out = RunReport(run_id=run_id, states=states)
  if pipeline_lib.PUSHER in executions:
    pushed = output_artifacts(store, executions[pipeline_lib.PUSHER]).get("pushed_model", [])
    if pushed:
      out.pushed = _int_property(pushed[0], "pushed") == 1
      if "pushed_destination" in pushed[0].custom_properties:
        out.pushed_destination = pushed[0].custom_properties["pushed_destination"].string_value
  if pipeline_lib.EVALUATOR in executions:
    outputs = output_artifacts(store, executions[pipeline_lib.EVALUATOR])
    for blessing in outputs.get("blessing", []):
      out.model_blessed = _int_property(blessing, "blessed") == 1
    for evaluation in outputs.get("evaluation", []):
      out.metrics = overall_metrics(evaluation.uri)
      out.validation_failures = validation_failures(evaluation.uri)
  if pipeline_lib.INFRA_VALIDATOR in executions:
    infra = output_artifacts(store, executions[pipeline_lib.INFRA_VALIDATOR])
    for blessing in infra.get("blessing", []):
      out.infra_blessed = _int_property(blessing, "blessed") == 1
      path = os.path.join(blessing.uri, "infra_validation.json")
      if os.path.exists(path):
        with open(path) as f:
          out.infra_reasons = list(json.load(f).get("reasons", []))
  return out


# Custom property the local runner sets on each pipeline_run context it ran:
# the fingerprint of the run's PipelineConfig.
CONFIG_FINGERPRINT_PROPERTY = "config_fingerprint"


def find_completed_run(
    store, pipeline_name: str, config_fingerprint: str, span: int,
    input_fingerprint: str,
) -> Optional[str]:
  """The latest run with these settings whose Pusher completed, over the
  same input: its ExampleGen output has `span` and `input_fingerprint` (what
  TFX's ExampleGen driver records on the Examples artifact). None if none.

  A completed Pusher means the run went through every gate: it pushed, or
  recorded why not (a blessing it did not get).
  """
  # Lazy as in connect().
  from ml_metadata.proto import metadata_store_pb2  # pylint: disable=g-import-not-at-top

  done = {metadata_store_pb2.Execution.COMPLETE, metadata_store_pb2.Execution.CACHED}
  for run_id in reversed(run_ids(store)):
    run = store.get_context_by_type_and_name(_PIPELINE_RUN_CONTEXT, run_id)
    tagged = run.custom_properties.get(CONFIG_FINGERPRINT_PROPERTY)
    if tagged is None or tagged.string_value != config_fingerprint:
      continue
    executions = node_executions(store, pipeline_name, run_id)
    pusher = executions.get(pipeline_lib.PUSHER)
    example_gen = executions.get(pipeline_lib.EXAMPLE_GEN)
    if pusher is None or example_gen is None or pusher.last_known_state not in done:
      continue
    for examples in output_artifacts(store, example_gen).get("examples", []):
      properties = examples.custom_properties
      if (
          "span" in properties and properties["span"].int_value == span
          and "input_fingerprint" in properties
          and properties["input_fingerprint"].string_value == input_fingerprint
      ):
        return run_id
  return None
