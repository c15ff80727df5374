"""Runs the pipeline locally: LocalDagRunner, SQLite ML Metadata, Beam
DirectRunner in multi-processing mode.

  python -m pipeline.local_runner --data_root=DIR --pipeline_root=DIR \
      --serving_model_dir=DIR [--date=YYYY-MM-DD] [--train_steps=N] [--model=eta]

At the end it prints where the model was pushed (or why it was not) and its
metrics against the baseline, read from ML Metadata and the Evaluator's
output. An interrupted run resumes from the components that completed.
Rerunning a date is idempotent (pipeline/rerun_guard.py): before running,
the runner looks in ML Metadata for a run with the same settings over the
same input whose Pusher completed; if there is one it prints that run's
outcome (where it pushed, or why not) and exits with the same status without
running.
`--force_rerun` runs anyway: the data half (ExampleGen .. Transform) is then
reused from the cache (no duplicated span) and the Trainer trains again,
warm-started from the model that run pushed, because that changed its input.
On Kubeflow the compiled pipeline has no such guard (each scheduled run
takes the newest span, and KFP's cache misses the Trainer for the same
reason); the equivalent is to make the same check before submitting a run,
against the cluster's ML Metadata (not implemented here).
Exit status: 0 pushed, 3 not pushed (blocked by a gate), 1 other errors.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
from typing import Optional, Sequence

from absl import app
from absl import flags

from pipeline import configs
from pipeline import pipeline as pipeline_lib
from pipeline import rerun_guard
from pipeline import run_report
from preprocessing import environment
from preprocessing import flag_parsing

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when run as a program, so that tests (and other entry
  # points) can import this module beside the other runner.
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
  flags.DEFINE_float(
      "min_volume_ratio", None, "Stop when the eval day's volume falls below "
      "this fraction of the earlier days' median (0: no check; default 0.7).",
  )
  flags.DEFINE_multi_string(
      "hparam", None, "Extra trainer setting NAME=VALUE (JSON value), repeatable; "
      "unknown names are refused by the trainer's config.",
  )
  flags.DEFINE_bool(
      "force_rerun", False, "Run even when a run with the same settings over the "
      "same input already completed its Pusher (otherwise its outcome is printed).",
  )

EXIT_NOT_PUSHED = 3


def config_from_flags() -> configs.PipelineConfig:
  for name in ("data_root", "pipeline_root", "serving_model_dir"):
    if not getattr(FLAGS, name):
      raise app.UsageError(f"--{name} is required")
  values = {
      "data_root": FLAGS.data_root,
      "pipeline_root": FLAGS.pipeline_root,
      "serving_model_dir": FLAGS.serving_model_dir,
  }
  optional = {
      "date": FLAGS.date, "rolling_window_days": FLAGS.rolling_window_days,
      "input_format": FLAGS.input_format, "schema_path": FLAGS.schema_path,
      "pipeline_name": FLAGS.pipeline_name, "warm_start": FLAGS.warm_start,
      "beam_pipeline_args": FLAGS.beam_pipeline_args,
      "min_volume_ratio": FLAGS.min_volume_ratio,
  }
  values.update({k: v for k, v in optional.items() if v is not None})
  trainer_flags = {
      "model": FLAGS.model, "max_seq_len": FLAGS.max_seq_len,
      "train_steps": FLAGS.train_steps, "eval_steps": FLAGS.eval_steps,
      "batch_size": FLAGS.batch_size,
  }
  hyperparameters = {}
  for item in FLAGS.hparam or ():
    name, sep, text = item.partition("=")
    if not sep:
      raise app.UsageError(f"--hparam {item!r} is not NAME=VALUE")
    try:
      hyperparameters[name] = json.loads(text)
    except json.JSONDecodeError:
      hyperparameters[name] = text
  values.update(configs.trainer_settings(
      {k: v for k, v in trainer_flags.items() if v is not None}, hyperparameters))
  return configs.PipelineConfig.from_dict(values)


def run(config: configs.PipelineConfig):
  """Runs the pipeline once; returns (run report, error or None)."""
  # TFX loads here, not at import (about 15 s): --help and config errors
  # answer at once.
  from tfx import v1 as tfx  # pylint: disable=g-import-not-at-top

  configs.check_schema_bound(config)
  os.makedirs(os.path.dirname(config.resolved_metadata_path) or ".", exist_ok=True)
  metadata = tfx.orchestration.metadata.sqlite_metadata_connection_config(
      config.resolved_metadata_path
  )
  earlier_run_ids = run_report.run_ids(rerun_guard.writable_store(config))
  error = None
  try:
    tfx.orchestration.LocalDagRunner().run(
        pipeline_lib.create_pipeline(config, metadata)
    )
  except Exception as e:  # pylint: disable=broad-except
    # A failed component (the data gate, a crash) ends the run; the report
    # below says which and MLMD keeps what completed for the next run.
    error = e
  rerun_guard.tag_new_run(config, earlier_run_ids)
  if error is not None and not run_report.run_ids(rerun_guard.writable_store(config)):
    return None, error  # failed before TFX recorded a run
  report = run_report.report(
      config.resolved_metadata_path, config.pipeline_name,
      run_failed=error is not None,
  )
  return report, error


def check_writable(config: configs.PipelineConfig) -> None:
  """Local output directories must be writable before any component runs
  (a read-only pipeline_root used to fail deep inside TFX)."""
  for name, path in (
      ("pipeline_root", config.pipeline_root),
      ("metadata_path", os.path.dirname(config.resolved_metadata_path) or "."),
      ("serving_model_dir", config.serving_model_dir),
  ):
    if "://" in path:
      continue  # object stores: left to the components
    try:
      os.makedirs(path, exist_ok=True)
      with tempfile.TemporaryFile(dir=path):
        pass
    except OSError as error:
      raise configs.ConfigError(
          f"--{name} {path} is not writable: {error.strerror or error}"
      ) from None


def exit_status(report, error) -> int:
  if report is None:
    return 1
  if report.pushed:
    return 0
  # Blocked by a gate (bad data, a worse model, a failed infra check): the
  # pipeline did its job; anything else is an error.
  if error is None or report.states.get(pipeline_lib.DATA_GATE) == "FAILED":
    return EXIT_NOT_PUSHED
  return 1


def main(argv: Sequence[str]) -> Optional[int]:
  del argv
  environment.check_environment()
  try:
    config = config_from_flags()
    configs.check_schema_bound(config)
    check_writable(config)
  except configs.ConfigError as error:
    print(f"local_runner: error: {error}", file=sys.stderr)
    return 1
  print("pipeline config:", {k: v for k, v in dataclasses.asdict(config).items()})
  if not FLAGS.force_rerun:
    previous = rerun_guard.completed_run(config)
    if previous is not None:
      report = run_report.report(
          config.resolved_metadata_path, config.pipeline_name, previous
      )
      print(
          f"NOT RERUN: run {previous} already ran these settings over the same "
          "input (span and input fingerprint) through the Pusher; nothing was "
          "trained or pushed now. Its outcome (--force_rerun to run again):"
      )
      print(report.format())
      return exit_status(report, None)
  report, error = run(config)
  if report is not None:
    print(report.format())
  if error is not None:
    print(f"run error: {type(error).__name__}: {error}", file=sys.stderr)
  return exit_status(report, error)


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=flag_parsing.parse_flags)
