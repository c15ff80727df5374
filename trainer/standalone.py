"""The standalone trainer's library: train, evaluate, export, write metrics.json."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Sequence

import tensorflow as tf

from trainer import config as config_lib
from trainer import export
from trainer import input as input_lib
from trainer import metrics as metrics_lib
from trainer import model as model_lib
from trainer import training

METRICS_FILE = "metrics.json"
SAVED_MODEL_DIR = "saved_model"
BACKUP_DIR = "backup"


def train_and_evaluate(
    train_files: Sequence[str] | str,
    eval_files: Sequence[str] | str,
    output_dir: str,
    model_config: config_lib.ModelConfig,
    train_config: config_lib.TrainConfig,
    eval_batch_size: int = 1024,
    export_model: bool = True,
) -> dict[str, Any]:
  """Trains on train_files, evaluates on eval_files, exports, writes metrics.json.

  Returns:
    the metrics.json content: auc, gauc, gauc_users, logloss,
    mean_prediction, mean_label, calibration, examples (eval),
    examples_per_sec_train, examples_per_sec_eval, train_seconds,
    train_steps_run, resumed_from_epoch, model_config, train_config.
    Under MultiWorkerMirroredStrategy (TF_CONFIG) only the chief writes
    metrics.json and the SavedModel; every worker returns the metrics.
  """
  tf.io.gfile.makedirs(output_dir)
  strategy = training.choose_strategy()
  with strategy.scope():
    model = model_lib.build_model(model_config)
    training.compile_model(model, train_config)
  train_dataset = input_lib.make_dataset(
      train_files, train_config.batch_size, model_config.max_seq_len,
      training=True, shuffle_buffer=train_config.shuffle_buffer,
      seed=model_config.seed,
  )
  progress = training.fit(
      model, train_dataset, train_config,
      callbacks=[
          tf.keras.callbacks.TensorBoard(os.path.join(output_dir, "logs")),
          # A restarted worker (same output_dir) resumes at the last epoch end.
          tf.keras.callbacks.BackupAndRestore(os.path.join(output_dir, BACKUP_DIR)),
      ],
  )
  eval_dataset = input_lib.make_dataset(
      eval_files, eval_batch_size, model_config.max_seq_len, training=False
  )
  predictions = training.predict(model, eval_dataset, train_config.eval_steps)
  result: dict[str, Any] = metrics_lib.evaluate(
      predictions["labels"], predictions["probabilities"], predictions["user_ids"]
  )
  result.update({
      "examples_per_sec_train": progress.examples_per_sec,
      "examples_per_sec_eval": float(
          predictions["labels"].size / predictions["seconds"]
      ),
      "train_seconds": progress.train_seconds,
      "train_steps_run": progress.steps,
      "resumed_from_epoch": progress.first_epoch,
      "model_config": model_config.to_dict(),
      "train_config": train_config.to_dict(),
  })
  chief = training.is_chief(strategy)
  if export_model:
    # Every worker saves (saving may run collectives); only the chief's stays.
    export_dir = (
        os.path.join(output_dir, SAVED_MODEL_DIR) if chief else tempfile.mkdtemp()
    )
    export.export_standalone(model, export_dir, model_config.max_seq_len)
    if not chief:
      tf.io.gfile.rmtree(export_dir)
  if chief:
    with tf.io.gfile.GFile(os.path.join(output_dir, METRICS_FILE), "w") as f:
      json.dump(result, f, indent=2, sort_keys=True)
  return result
