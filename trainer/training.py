"""Training loop pieces shared by the standalone trainer and `run_fn`.

Strategy choice, the Keras fit with progress and throughput, prediction over
an eval set, and warm start from a previously exported SavedModel.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Iterable, Optional

import numpy as np
import tensorflow as tf
from absl import logging

from preprocessing import features
from trainer import config as config_lib
from trainer import model as model_lib


def choose_strategy(tf_config: Optional[str] = None) -> tf.distribute.Strategy:
  """The distribution strategy for this process.

  Args:
    tf_config: the TF_CONFIG JSON; None reads the environment variable.

  Returns:
    MultiWorkerMirroredStrategy when TF_CONFIG names a cluster with more
    than one task; MirroredStrategy when GPUs exist; otherwise the default
    (one-device) strategy.
  """
  if tf_config is None:
    tf_config = os.environ.get("TF_CONFIG", "")
  cluster = json.loads(tf_config).get("cluster", {}) if tf_config else {}
  tasks = sum(len(addresses) for addresses in cluster.values())
  if tasks > 1:
    return tf.distribute.MultiWorkerMirroredStrategy()
  if tf.config.list_logical_devices("GPU"):
    return tf.distribute.MirroredStrategy()
  return tf.distribute.get_strategy()


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True for the worker that writes the final outputs."""
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return True
  if resolver.task_type == "chief":
    return True
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def epochs_for(train_config: config_lib.TrainConfig) -> tuple[int, int]:
  """(epochs, steps per epoch) covering train_steps with at most epochs-1 extra."""
  epochs = math.ceil(train_config.train_steps / train_config.steps_per_epoch)
  return epochs, math.ceil(train_config.train_steps / epochs)


class ProgressLogger(tf.keras.callbacks.Callback):
  """Logs step, metrics and examples/s at each epoch end; measures throughput.

  The first `warmup_steps` steps (tracing, XLA compilation) are left out of
  the steady-state rate.
  """

  def __init__(self, batch_size: int, total_steps: int, warmup_steps: int = 5):
    super().__init__()
    self.batch_size = batch_size
    self.total_steps = total_steps
    self.warmup_steps = warmup_steps
    self.steps = 0
    self.first_epoch: Optional[int] = None
    self._start = 0.0
    self._warm_time: Optional[float] = None
    self.train_seconds = 0.0

  def on_train_begin(self, logs=None):
    self._start = time.perf_counter()

  def on_epoch_begin(self, epoch, logs=None):
    if self.first_epoch is None:
      self.first_epoch = epoch
      if epoch > 0:
        logging.info("resuming from the backup at epoch %d", epoch)

  def on_train_batch_end(self, batch, logs=None):
    self.steps += 1
    if self.steps == self.warmup_steps:
      self._warm_time = time.perf_counter()

  def on_epoch_end(self, epoch, logs=None):
    elapsed = time.perf_counter() - self._start
    # Keras' streaming AUC is only meaningful on one replica (with several,
    # its per-replica state gives values outside [0, 1]).
    names = ("loss", "auc") if self.model.distribute_strategy.num_replicas_in_sync == 1 else ("loss",)
    shown = {k: round(float(v), 4) for k, v in (logs or {}).items() if k in names}
    logging.info(
        "step %d/%d  %s  %.0f examples/s", self.steps, self.total_steps, shown,
        self.steps * self.batch_size / max(elapsed, 1e-9),
    )

  def on_train_end(self, logs=None):
    self.train_seconds = time.perf_counter() - self._start

  @property
  def examples_per_sec(self) -> float:
    """Steady-state training throughput (whole run if too short to warm up)."""
    end = self._start + self.train_seconds
    if self._warm_time is not None and self.steps > self.warmup_steps:
      return (self.steps - self.warmup_steps) * self.batch_size / (end - self._warm_time)
    return self.steps * self.batch_size / max(self.train_seconds, 1e-9)


def compile_model(model: model_lib.EtaModel, train_config: config_lib.TrainConfig) -> None:
  model.compile(optimizer=tf.keras.optimizers.Adam(train_config.learning_rate))


def fit(
    model: model_lib.EtaModel,
    train_dataset: tf.data.Dataset,
    train_config: config_lib.TrainConfig,
    callbacks: Iterable[tf.keras.callbacks.Callback] = (),
) -> ProgressLogger:
  """Trains for train_steps (rounded up to whole epochs); returns the progress logger."""
  epochs, steps_per_epoch = epochs_for(train_config)
  progress = ProgressLogger(train_config.batch_size, epochs * steps_per_epoch)
  model.fit(
      train_dataset,
      epochs=epochs,
      steps_per_epoch=steps_per_epoch,
      callbacks=[progress, *callbacks],
      verbose=0,
  )
  return progress


def predict(
    model: model_lib.EtaModel, dataset: tf.data.Dataset, max_batches: Optional[int] = None
) -> dict[str, np.ndarray]:
  """Click probabilities over an eval dataset of (features, label) batches.

  Returns:
    dict with `probabilities`, `labels`, `user_ids` (numpy, aligned) and
    `seconds` (wall time of the prediction loop, tracing included).
  """

  @tf.function(reduce_retracing=True)
  def probabilities(batch):
    return tf.sigmoid(model(batch, training=False))

  outputs: dict[str, list[np.ndarray]] = {"probabilities": [], "labels": [], "user_ids": []}
  start = time.perf_counter()
  for i, (batch, labels) in enumerate(dataset):
    if max_batches is not None and i >= max_batches:
      break
    outputs["probabilities"].append(probabilities(batch).numpy())
    outputs["labels"].append(labels.numpy())
    outputs["user_ids"].append(batch[features.USER_ID.name].numpy().reshape(-1))
  seconds = time.perf_counter() - start
  if not outputs["labels"]:
    raise ValueError("the eval dataset is empty")
  result = {k: np.concatenate(v) for k, v in outputs.items()}
  result["seconds"] = np.float64(seconds)
  return result


def warm_start(model: model_lib.EtaModel, saved_model_dir: str) -> list[str]:
  """Loads, layer by layer and by name, the weights a previous export holds.

  The exported SavedModel's checkpoint holds the model's object graph, in
  which each layer is the root's child named by its attribute
  (`item_embedding`, `long_attention`, ...); restoring a checkpoint rooted
  at {name: layer} matches through that graph. Layers missing there or of
  another shape (a changed variant or size) keep their fresh weights; the
  optimizer state is never loaded.

  Returns:
    names of the layers that were loaded.
  """
  checkpoint_path = os.path.join(saved_model_dir, "variables", "variables")
  loaded = []
  for name, layer in _named_layers(model):
    try:
      status = tf.train.Checkpoint(**{name: layer}).read(checkpoint_path)
      status.expect_partial()
      status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as error:
      logging.warning(
          "warm start: %s left fresh (%s)", name, str(error).splitlines()[0][:200]
      )
      continue
    loaded.append(name)
  logging.info("warm start from %s: loaded %s", saved_model_dir, loaded)
  return loaded


def _named_layers(model: model_lib.EtaModel) -> list[tuple[str, Any]]:
  """(attribute name, layer) for every weight-holding attribute of the model."""
  named = []
  for name, value in vars(model).items():
    if name.startswith("_") or not isinstance(value, tf.keras.layers.Layer):
      continue
    if value.weights and value is not model.task:
      named.append((name, value))
  if model.mlp_layers:
    named.append(("mlp_layers", model.mlp_layers))
  return named
