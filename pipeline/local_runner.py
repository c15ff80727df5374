"""Runs the pipeline locally: LocalDagRunner, SQLite ML Metadata, Beam
DirectRunner in multi-processing mode.

  python -m pipeline.local_runner --data_root=DIR --pipeline_root=DIR \
      --serving_model_dir=DIR [--date=YYYY-MM-DD] [--train_steps=N] [--model=eta]

At the end it prints where the model was pushed (or why it was not) and its
metrics against the baseline, read from ML Metadata and the Evaluator's
output. An interrupted run resumes from the components that completed.
Rerunning a date reuses the cached data half (ExampleGen .. Transform: no
duplicated span); if that date's first run pushed a model, the Trainer runs
again, because its warm-start input is now that model, and the result is
pushed only if it beats the served model (see pipeline/pipeline.py).
Exit status: 0 pushed, 3 not pushed (blocked by a gate), 1 other errors.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Optional, Sequence

from absl import app
from absl import flags

from pipeline import configs

FLAGS = flags.FLAGS
flags.DEFINE_string("data_root", None, "Raw logs (behaviors/YYYYMMDD.csv ...).")
flags.DEFINE_string("pipeline_root", None, "Artifacts and the SQLite ML Metadata.")
flags.DEFINE_string("serving_model_dir", None, "Base directory TF Serving watches.")
flags.DEFINE_string("date", None, "Newest day to train on, YYYY-MM-DD (default: newest span).")
flags.DEFINE_integer("train_steps", None, "Trainer steps.")
flags.DEFINE_integer("eval_steps", None, "Trainer eval steps.")
flags.DEFINE_integer("batch_size", None, "Training batch size.")
flags.DEFINE_string("model", None, "Model variant (eta, din, avgpool, sim_hard, exact_topk, full_attention, sdim).")
flags.DEFINE_integer("max_seq_len", None, "History length (must equal the schema's bound).")
flags.DEFINE_integer("rolling_window_days", None, "Days of impressions per run.")
flags.DEFINE_string("input_format", None, "behavior | impressions | movielens.")
flags.DEFINE_string("schema_path", None, "Curated schema (default: the checked-in one).")
flags.DEFINE_string("pipeline_name", None, "Pipeline name.")
flags.DEFINE_bool("warm_start", None, "Start from the latest blessed model.")
flags.DEFINE_multi_string("beam_pipeline_args", None, "Beam options (repeat the flag).")
flags.DEFINE_multi_string(
    "hparam", None, "Extra trainer setting NAME=VALUE (JSON value), repeatable; "
    "unknown names are refused by the trainer's config.",
)

EXIT_NOT_PUSHED = 3


def config_from_flags() -> configs.PipelineConfig:
  import json  # pylint: disable=g-import-not-at-top

  for name in ("data_root", "pipeline_root", "serving_model_dir"):
    if not getattr(FLAGS, name):
      raise app.UsageError(f"--{name} is required")
  values = {
      "data_root": FLAGS.data_root,
      "pipeline_root": FLAGS.pipeline_root,
      "serving_model_dir": FLAGS.serving_model_dir,
  }
  optional = {
      "date": FLAGS.date, "train_steps": FLAGS.train_steps,
      "eval_steps": FLAGS.eval_steps, "batch_size": FLAGS.batch_size, "model": FLAGS.model,
      "max_seq_len": FLAGS.max_seq_len, "rolling_window_days": FLAGS.rolling_window_days,
      "input_format": FLAGS.input_format, "schema_path": FLAGS.schema_path,
      "pipeline_name": FLAGS.pipeline_name, "warm_start": FLAGS.warm_start,
      "beam_pipeline_args": FLAGS.beam_pipeline_args,
  }
  values.update({k: v for k, v in optional.items() if v is not None})
  if FLAGS.hparam:
    hyperparameters = {}
    for item in FLAGS.hparam:
      name, sep, text = item.partition("=")
      if not sep:
        raise app.UsageError(f"--hparam {item!r} is not NAME=VALUE")
      try:
        hyperparameters[name] = json.loads(text)
      except json.JSONDecodeError:
        hyperparameters[name] = text
    values["hyperparameters"] = hyperparameters
  return configs.PipelineConfig.from_dict(values)


def check_schema_bound(config: configs.PipelineConfig) -> None:
  """The schema's history bound must be the configured max_seq_len."""
  from pipeline import schema_builder  # pylint: disable=g-import-not-at-top

  bound = schema_builder.sequence_bound(schema_builder.load_schema(config.schema_path))
  if bound != config.max_seq_len:
    raise configs.ConfigError(
        f"max_seq_len {config.max_seq_len} differs from the schema's history "
        f"bound {bound} ({config.schema_path}); generate a schema with "
        f"`python -m pipeline.schema_builder --max_seq_len={config.max_seq_len} "
        "--output=...` and pass --schema_path"
    )


def run(config: configs.PipelineConfig):
  """Runs the pipeline once; returns (run report, error or None)."""
  import os  # pylint: disable=g-import-not-at-top

  from tfx import v1 as tfx  # pylint: disable=g-import-not-at-top

  from pipeline import pipeline as pipeline_lib  # pylint: disable=g-import-not-at-top
  from pipeline import run_report  # pylint: disable=g-import-not-at-top

  check_schema_bound(config)
  os.makedirs(os.path.dirname(config.resolved_metadata_path) or ".", exist_ok=True)
  metadata = tfx.orchestration.metadata.sqlite_metadata_connection_config(
      config.resolved_metadata_path
  )
  error = None
  try:
    tfx.orchestration.LocalDagRunner().run(
        pipeline_lib.create_pipeline(config, metadata)
    )
  except Exception as e:  # pylint: disable=broad-except
    # A failed component (the data gate, a crash) ends the run; the report
    # below says which and MLMD keeps what completed for the next run.
    error = e
  report = run_report.report(config.resolved_metadata_path, config.pipeline_name)
  return report, error


def main(argv: Sequence[str]) -> Optional[int]:
  del argv
  from preprocessing import environment  # pylint: disable=g-import-not-at-top

  environment.check_environment()
  config = config_from_flags()
  print("pipeline config:", {k: v for k, v in dataclasses.asdict(config).items()})
  report, error = run(config)
  print(report.format())
  if error is not None:
    print(f"run error: {type(error).__name__}: {error}", file=sys.stderr)
  if report.pushed:
    return 0
  # Blocked by a gate (bad data, a worse model, a failed infra check): the
  # pipeline did its job; anything else is an error.
  if error is None or report.states.get("DataGate") == "FAILED":
    return EXIT_NOT_PUSHED
  return 1


if __name__ == "__main__":
  app.run(main)
