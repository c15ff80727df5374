"""The TFX Trainer's entry point: `run_fn` (`Trainer(run_fn="trainer.tfx_trainer.run_fn")`).

Reads Transform's output through `fn_args.data_accessor` and runs the shared
`training.run_training`: the strategy the environment calls for (one device;
MirroredStrategy on GPUs; MultiWorkerMirroredStrategy from TF_CONFIG),
TensorBoard under `fn_args.model_run_dir`, BackupAndRestore checkpoints
there (a killed worker resumes where the last epoch ended; only the run
whose settings and input files match the fingerprint beside them), early
stopping on the newest `validation_days` UTC days of the TRAIN split (by the
`timestamp` Transform passes through; the eval split is only read after
training), warm start from `fn_args.base_model` (the last blessed model)
when given, and a chief-only export of the SavedModel with `serving_default`
(serialized raw tf.Example -> probabilities, Transform layer inside) and
`transform_features` (for TFMA). `model_run_dir/metrics.json` records the
run (steps, validation split, best epoch and its metric, Keras eval loss).

`fn_args.custom_config` is a flat dict of ModelConfig/TrainConfig fields
(unknown keys refused); train and eval steps come from TrainArgs/EvalArgs
(train steps are the upper bound when early stopping is on).
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

import tensorflow as tf
from absl import logging

from preprocessing import transforms
from trainer import config as config_lib
from trainer import export
from trainer import input as input_lib
from trainer import training

BACKUP_SUBDIR = "backup"
METRICS_FILE = "metrics.json"


def trainer_configs(
    custom_config: Optional[Mapping[str, Any]], train_steps: int, eval_steps: Optional[int]
) -> tuple[config_lib.ModelConfig, config_lib.TrainConfig]:
  """fn_args.custom_config + TrainArgs/EvalArgs steps -> typed configs.

  An eval_steps of 0 or None means the whole eval split.
  """
  settings = dict(custom_config or {})
  for key in ("train_steps", "eval_steps"):
    if key in settings:
      raise config_lib.ConfigError(
          f"custom_config must not set {key!r}: the Trainer's TrainArgs/EvalArgs do"
      )
  settings["train_steps"] = int(train_steps)
  settings["eval_steps"] = int(eval_steps) if eval_steps else None
  return config_lib.split_flat_config(settings)


def check_transformed_schema(feature_spec: dict[str, Any], max_seq_len: int) -> None:
  """The Transform output must hold `transform_features`' outputs at the model's length."""
  problems = []
  for name in transforms.OUTPUT_FEATURES:
    found = feature_spec.get(name)
    want = [max_seq_len] if name in transforms.SEQUENCE_OUTPUTS else []
    if found is None:
      problems.append(f"{name} missing")
    elif not isinstance(found, tf.io.FixedLenFeature) or list(found.shape) != want:
      problems.append(f"{name} is {found}, the model needs FixedLenFeature {want}")
  if problems:
    raise config_lib.ConfigError(
        "the Transform output does not fit the model (max_seq_len "
        f"{max_seq_len}): " + "; ".join(problems)
    )


def _check_files(patterns: list[str], split: str) -> list[str]:
  try:
    return input_lib.list_files(patterns)
  except FileNotFoundError as error:
    raise training.TrainingError(f"the {split} split: {error}") from None


def run_fn(fn_args: Any) -> None:
  """TFX Trainer entry point (see the module docstring).

  Args:
    fn_args: tfx.components.FnArgs: train/eval files, data_accessor,
      transform_output, serving_model_dir, model_run_dir, base_model,
      train_steps, eval_steps, custom_config.

  Raises:
    config_lib.ConfigError: bad custom_config or a Transform output that does
      not fit the model.
    training.TrainingError: an empty split, too few training days for the
      validation split, or model_run_dir holding another run's checkpoint.
  """
  # TF Transform (with Beam, seconds) only when the Trainer runs: importing
  # this module for its custom_config checks stays fast.
  import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top

  model_config, train_config = trainer_configs(
      fn_args.custom_config, fn_args.train_steps, fn_args.eval_steps
  )
  logging.info("run_fn: %s, %s", model_config, train_config)
  tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
  check_transformed_schema(
      tf_transform_output.transformed_feature_spec(), model_config.max_seq_len
  )
  train_files = _check_files(list(fn_args.train_files), "train")
  _check_files(list(fn_args.eval_files), "eval")

  def dataset(time_range, is_training):
    return input_lib.make_transformed_dataset(
        fn_args.train_files, fn_args.data_accessor, tf_transform_output,
        train_config.batch_size, training=is_training,
        seed=model_config.seed if is_training else None, time_range=time_range,
    )

  run = training.run_training(
      model_config, train_config,
      training.TrainingData(
          train_files,
          lambda: input_lib.count_transformed_days(
              fn_args.train_files, fn_args.data_accessor, tf_transform_output),
          dataset,
      ),
      run_dir=fn_args.model_run_dir,
      backup_dir=os.path.join(fn_args.model_run_dir, BACKUP_SUBDIR),
      log_dir=fn_args.model_run_dir,
      export_fn=lambda model, export_dir: export.export_with_transform(
          model, export_dir, tf_transform_output),
      export_dir=fn_args.serving_model_dir,
      base_model=fn_args.base_model,
  )
  eval_dataset = input_lib.make_transformed_dataset(
      fn_args.eval_files, fn_args.data_accessor, tf_transform_output,
      train_config.batch_size, training=False,
  )
  evaluation = run.model.evaluate(
      eval_dataset, steps=train_config.eval_steps, return_dict=True, verbose=0
  )
  logging.info("run_fn eval (Keras): %s", evaluation)
  if run.chief:
    summary = {**run.summary(), "eval_keras": {k: float(v) for k, v in evaluation.items()},
               "model_config": model_config.to_dict(), "train_config": train_config.to_dict()}
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, METRICS_FILE), "w") as f:
      json.dump(summary, f, indent=2, sort_keys=True)
