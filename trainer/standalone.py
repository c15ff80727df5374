"""The standalone trainer's library: train, evaluate, export, write metrics.json.

The training run itself (strategy, fit, callbacks, early stopping on the
newest training days, chief-only export) is `training.run_training`, shared
with the TFX `run_fn`; this module reads ingestion TFRecords, evaluates on
the eval files after training and writes OUT/metrics.json.
"""

from __future__ import annotations

import json
import os
from typing import Any, Sequence

import tensorflow as tf

from trainer import config as config_lib
from trainer import export
from trainer import input as input_lib
from trainer import metrics as metrics_lib
from trainer import training

METRICS_FILE = "metrics.json"
SAVED_MODEL_DIR = "saved_model"
BACKUP_DIR = "backup"
LOGS_DIR = "logs"


def _files(pattern: Sequence[str] | str, what: str) -> list[str]:
  try:
    return input_lib.list_files(pattern)
  except FileNotFoundError as error:
    raise training.TrainingError(f"{what}: {error}") from None


def train_and_evaluate(
    train_files: Sequence[str] | str,
    eval_files: Sequence[str] | str,
    output_dir: str,
    model_config: config_lib.ModelConfig,
    train_config: config_lib.TrainConfig,
    eval_batch_size: int = 1024,
    export_model: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
  """Trains on train_files, evaluates on eval_files, exports, writes metrics.json.

  Both globs, and that the eval files hold an example, are checked before
  training. Early stopping (train_config.validation_days > 0) validates on
  the newest days of train_files, never on eval_files.

  Args:
    overwrite: output_dir may hold another run's state (backup, outputs):
      delete it and start afresh instead of refusing.

  Returns:
    the metrics.json content: auc, gauc, gauc_users, logloss,
    mean_prediction, mean_label, calibration, examples (eval),
    examples_per_sec_train, examples_per_sec_eval, train_seconds,
    train_steps_run (this process), train_steps_total (with the steps before
    a resume), resumed_from_epoch, validation (the split's days and counts;
    with early stopping: metric, best_epoch, best_step, best_value,
    stopped_early, history of per-epoch validation metrics), model_config,
    train_config. Under MultiWorkerMirroredStrategy (TF_CONFIG) only the
    chief writes metrics.json and the SavedModel; every worker returns the
    metrics.

  Raises:
    training.TrainingError: a glob matches nothing, the eval files are empty,
      no training examples, too few training days for the validation split,
      or output_dir holds another run (without overwrite).
  """
  train_list = _files(train_files, "--train_files")
  eval_list = _files(eval_files, "--eval_files")

  def dataset(time_range, is_training):
    if is_training:
      return input_lib.make_dataset(
          train_list, train_config.batch_size, model_config.max_seq_len,
          training=True, shuffle_buffer=train_config.shuffle_buffer,
          seed=model_config.seed, time_range=time_range,
      )
    return input_lib.make_dataset(
        train_list, eval_batch_size, model_config.max_seq_len, training=False,
        time_range=time_range,
    )

  def make_eval_dataset():
    return input_lib.make_dataset(
        eval_list, eval_batch_size, model_config.max_seq_len, training=False
    )

  def export_fn(model, export_dir):
    if export_model:
      export.export_standalone(model, export_dir, model_config.max_seq_len)

  def check_eval_files():
    # Before training, so that a bad eval set does not lose the model.
    batches = make_eval_dataset().take(1)
    if not list(batches.as_numpy_iterator()):
      raise training.TrainingError(f"--eval_files: {eval_list} hold no examples")

  tf.io.gfile.makedirs(output_dir)
  run = training.run_training(
      model_config, train_config,
      training.TrainingData(train_list, lambda: input_lib.count_days(train_list), dataset),
      run_dir=output_dir,
      backup_dir=os.path.join(output_dir, BACKUP_DIR),
      log_dir=os.path.join(output_dir, LOGS_DIR),
      export_fn=export_fn,
      export_dir=os.path.join(output_dir, SAVED_MODEL_DIR),
      state_paths=[os.path.join(output_dir, name)
                   for name in (LOGS_DIR, SAVED_MODEL_DIR, METRICS_FILE)],
      overwrite=overwrite,
      overwrite_hint=" or --overwrite to delete it and start afresh",
      before_training=check_eval_files,
  )
  predictions = training.predict(run.model, make_eval_dataset(), train_config.eval_steps)
  result: dict[str, Any] = metrics_lib.evaluate(
      predictions["labels"], predictions["probabilities"], predictions["user_ids"]
  )
  result.update(run.summary())
  result.update({
      "examples_per_sec_eval": float(
          predictions["labels"].size / predictions["seconds"]
      ),
      "model_config": model_config.to_dict(),
      "train_config": train_config.to_dict(),
  })
  if run.chief:
    with tf.io.gfile.GFile(os.path.join(output_dir, METRICS_FILE), "w") as f:
      json.dump(result, f, indent=2, sort_keys=True)
  return result
