"""The training run shared by the standalone trainer and the TFX `run_fn`.

`run_training` is the one place that chooses the strategy, builds and
compiles the model, guards the working directory (a checkpoint is resumed
only by the run that wrote it), holds out the newest training days for early
stopping, fits with TensorBoard, BackupAndRestore and early stopping, and
exports on the chief only (the caller passes the export function). Also here:
prediction over an eval set and warm start from an exported SavedModel.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import tempfile
import time
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import tensorflow as tf
from absl import logging

from preprocessing import features
from trainer import config as config_lib
from trainer import input as input_lib
from trainer import metrics as metrics_lib
from trainer import model as model_lib

# Beside the BackupAndRestore state: what run wrote it (settings, input files).
FINGERPRINT_FILE = "run_fingerprint.json"
# Early stopping's own state (metric history, best weights), in the backup dir.
VALIDATION_STATE_DIR = "validation"


class TrainingError(ValueError):
  """The run cannot start or go on for a reason the user can fix (one line)."""


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
  the steady-state rate. `steps` counts this process's steps; the logged
  step number also counts the epochs done before a resume.
  """

  def __init__(self, batch_size: int, total_steps: int, warmup_steps: int = 5,
               steps_per_epoch: Optional[int] = None):
    super().__init__()
    self.batch_size = batch_size
    self.total_steps = total_steps
    self.warmup_steps = warmup_steps
    self.steps_per_epoch = steps_per_epoch
    self.steps = 0
    self.steps_before_resume = 0
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
        self.steps_before_resume = epoch * (self.steps_per_epoch or 0)
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
    names += tuple(f"val_{name}" for name in config_lib.EARLY_STOPPING_METRICS)
    shown = {k: round(float(v), 4) for k, v in (logs or {}).items() if k in names}
    logging.info(
        "step %d/%d  %s  %.0f examples/s", self.total_steps_done, self.total_steps, shown,
        self.steps * self.batch_size / max(elapsed, 1e-9),
    )

  @property
  def total_steps_done(self) -> int:
    """Steps of the whole run, those before a resume included."""
    return self.steps_before_resume + self.steps

  def on_train_end(self, logs=None):
    self.train_seconds = time.perf_counter() - self._start

  @property
  def examples_per_sec(self) -> float:
    """Steady-state training throughput (whole run if too short to warm up)."""
    end = self._start + self.train_seconds
    if self._warm_time is not None and self.steps > self.warmup_steps:
      return (self.steps - self.warmup_steps) * self.batch_size / (end - self._warm_time)
    return self.steps * self.batch_size / max(self.train_seconds, 1e-9)


@tf.keras.utils.register_keras_serializable(package="eta")
class WarmupAveragingAdam(tf.keras.optimizers.Adam):
  """Adam with a weight average whose momentum warms up.

  At step t (from 0) the average moves with momentum
  min(ema_momentum, (1 + t) / (10 + t)), the num_updates rule of
  tf.train.ExponentialMovingAverage. Keras' fixed momentum starts the average
  at the initial weights, so a model kept after 100 steps at 0.99 is still
  37% its random initialisation (MovieLens stops at step 100: eta lost 0.03
  AUC that way).
  """

  def _update_model_variables_moving_average(self, var_list):
    fixed = self.ema_momentum
    step = tf.cast(self.iterations, tf.float32)
    self.ema_momentum = tf.minimum(fixed, (1.0 + step) / (10.0 + step))
    try:
      super()._update_model_variables_moving_average(var_list)
    finally:
      self.ema_momentum = fixed


def compile_model(model: Any, train_config: config_lib.TrainConfig) -> None:
  if train_config.ema_momentum > 0:
    # Overwriting at each epoch end (the last step of an epoch) means the
    # weights that early stopping evaluates and keeps are the averaged ones.
    optimizer = WarmupAveragingAdam(
        train_config.learning_rate, use_ema=True, ema_momentum=train_config.ema_momentum,
        ema_overwrite_frequency=epochs_for(train_config)[1])
  else:
    optimizer = tf.keras.optimizers.Adam(train_config.learning_rate)
  model.compile(optimizer=optimizer)


def fit(
    model: Any,
    train_dataset: tf.data.Dataset,
    train_config: config_lib.TrainConfig,
    callbacks: Iterable[tf.keras.callbacks.Callback] = (),
) -> ProgressLogger:
  """Trains for train_steps (rounded up to whole epochs; early stopping may
  end it sooner); returns the progress logger.

  The progress logger runs after `callbacks`, so it shows the validation
  metric an early-stopping callback among them adds to the epoch's logs.
  """
  epochs, steps_per_epoch = epochs_for(train_config)
  progress = ProgressLogger(
      train_config.batch_size, epochs * steps_per_epoch, steps_per_epoch=steps_per_epoch
  )
  model.fit(
      train_dataset,
      epochs=epochs,
      steps_per_epoch=steps_per_epoch,
      callbacks=[*callbacks, progress],
      verbose=0,
  )
  return progress


def predict(
    model: Any, dataset: tf.data.Dataset, max_batches: Optional[int] = None
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


def warm_start(model: Any, saved_model_dir: str) -> list[str]:
  """Loads, layer by layer and by name, the weights a previous export holds.

  The exported SavedModel's checkpoint holds the model's object graph, in
  which each layer is its parent's child named by its attribute
  (`feature_embeddings`, `long_branch`, ...); restoring a checkpoint rooted
  at {name: layer} matches through that graph. A layer that does not match
  whole (missing there, another shape, or sub-layers the old model never
  built) is put back as it was and its sub-layers are tried one by one, so
  e.g. the item embedding of a din export still warm-starts an eta model.
  What matches nowhere keeps its fresh weights; the optimizer state is never
  loaded.

  Returns:
    dotted names of the layers that were loaded (`feature_embeddings`,
    `feature_embeddings.item_embedding`, ...).
  """
  checkpoint_path = os.path.join(saved_model_dir, "variables", "variables")
  loaded: list[str] = []
  loaded_layers: set[int] = set()  # a layer shared by two parents loads once

  def nested(path: list[str], layer: Any) -> tf.train.Checkpoint:
    root: Any = layer
    for name in reversed(path[1:]):
      root = tf.train.Checkpoint(**{name: root})
    return tf.train.Checkpoint(**{path[0]: root})

  def load(path: list[str], layer: Any) -> None:
    if id(layer) in loaded_layers:
      return
    before = [w.numpy() for w in layer.weights]
    try:
      status = nested(path, layer).read(checkpoint_path)
      status.expect_partial()
      status.assert_existing_objects_matched()
      loaded.append(".".join(path))
      loaded_layers.add(id(layer))
      return
    except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as error:
      # A failed read may have restored part of the layer: undo it.
      for weight, value in zip(layer.weights, before):
        weight.assign(value)
      children = _named_layers(layer) if isinstance(layer, tf.keras.layers.Layer) else []
      if not children:
        logging.warning("warm start: %s left fresh (%s)", ".".join(path),
                        str(error).splitlines()[0][:200])
    for name, child in children:
      load(path + [name], child)

  for name, layer in _named_layers(model):
    load([name], layer)
  logging.info("warm start from %s: loaded %s", saved_model_dir, loaded)
  return loaded


def _named_layers(layer: Any) -> list[tuple[str, Any]]:
  """(attribute name, layer) for every weight-holding sub-layer attribute."""
  named = []
  for name, value in vars(layer).items():
    if name.startswith("_") or value is getattr(layer, "task", None):
      continue
    if isinstance(value, tf.keras.layers.Layer) and value.weights:
      named.append((name, value))
    elif (isinstance(value, (list, tuple)) and value
          and all(isinstance(v, tf.keras.layers.Layer) for v in value)):
      named.append((name, value))  # e.g. mlp_layers, one list in the graph
  return named


# --- Which run a working directory belongs to ------------------------------


def run_fingerprint(
    model_config: config_lib.ModelConfig,
    train_config: config_lib.TrainConfig,
    train_files: Sequence[str],
) -> dict[str, Any]:
  """What a checkpoint depends on: the settings and the training files.

  eval_steps is left out (it does not touch the training state), and so are
  the eval files; each training file is named with its size and mtime, so
  rewritten data is a different run.
  """
  train_settings = train_config.to_dict()
  train_settings.pop("eval_steps")
  files = []
  for path in train_files:
    stat = tf.io.gfile.stat(path)
    files.append({"path": path, "bytes": int(stat.length), "mtime_ns": int(stat.mtime_nsec)})
  # Through JSON so that tuples compare equal to what a file read back holds.
  return json.loads(json.dumps({
      "settings": {"model_config": model_config.to_dict(), "train_config": train_settings},
      "train_files": files,
  }, sort_keys=True))


def _differences(previous: dict[str, Any], current: dict[str, Any]) -> list[str]:
  differ = []
  for group in ("model_config", "train_config"):
    old = previous.get("settings", {}).get(group, {})
    new = current["settings"][group]
    differ += [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
  if previous.get("train_files") != current["train_files"]:
    differ.append("the training files (names, sizes or mtimes)")
  return differ or ["the fingerprint format"]


def guard_run_dir(
    run_dir: str,
    fingerprint: dict[str, Any],
    state_paths: Sequence[str],
    overwrite: bool,
    chief: bool,
    overwrite_hint: str = "",
) -> None:
  """Lets only the run that wrote `run_dir` resume from it.

  Args:
    run_dir: where FINGERPRINT_FILE goes.
    fingerprint: `run_fingerprint` of this run.
    state_paths: what a previous run leaves there (backup, outputs); any of
      them without a matching fingerprint means another (or an unknown) run.
    overwrite: delete `state_paths` of another run and start afresh instead
      of refusing.
    chief: only the chief writes or deletes.
    overwrite_hint: appended to the refusal (how to overwrite, if possible).

  Raises:
    TrainingError: the directory holds another run's state.
  """
  path = os.path.join(run_dir, FINGERPRINT_FILE)
  previous = None
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path) as f:
      previous = json.load(f)
  if previous == fingerprint:
    return  # the same run: BackupAndRestore resumes what it left
  leftovers = [p for p in state_paths if tf.io.gfile.exists(p)]
  if previous is not None or leftovers:
    if not overwrite:
      what = (
          "another run: it differs in " + ", ".join(_differences(previous, fingerprint))
          if previous is not None else f"a run of unknown settings (no {FINGERPRINT_FILE})"
      )
      raise TrainingError(
          f"{run_dir} holds the state of {what}; a checkpoint is resumed only by "
          f"the run that wrote it: use another directory{overwrite_hint}"
      )
    if chief:
      logging.warning("overwrite: deleting the previous run's %s", leftovers)
      for leftover in leftovers:
        if tf.io.gfile.isdir(leftover):
          tf.io.gfile.rmtree(leftover)
        else:
          tf.io.gfile.remove(leftover)
  if chief:
    tf.io.gfile.makedirs(run_dir)
    _write_atomically(path, json.dumps(fingerprint, indent=2, sort_keys=True).encode())


def _write_atomically(path: str, data: bytes) -> None:
  temporary = f"{path}.tmp-{os.getpid()}"
  with tf.io.gfile.GFile(temporary, "wb") as f:
    f.write(data)
  tf.io.gfile.rename(temporary, path, overwrite=True)


# --- The validation split ---------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ValidationSplit:
  """Training vs validation examples of the training files, by UTC day.

  Attributes:
    train_range / validation_range: TimeRanges (None: no early stopping, all
      examples train).
    train_days / validation_days: the UTC dates (YYYY-MM-DD) of each part.
    train_examples / validation_examples: their example counts.
  """

  train_range: Optional[input_lib.TimeRange]
  validation_range: Optional[input_lib.TimeRange]
  train_days: tuple[str, ...]
  validation_days: tuple[str, ...]
  train_examples: int
  validation_examples: int

  def to_dict(self) -> dict[str, Any]:
    return {
        "train_days": list(self.train_days), "validation_days": list(self.validation_days),
        "train_examples": self.train_examples,
        "validation_examples": self.validation_examples,
    }


def _date(day: int) -> str:
  return time.strftime("%Y-%m-%d", time.gmtime(day * features.SECONDS_PER_DAY))


def split_by_days(day_counts: dict[int, int], validation_days: int) -> ValidationSplit:
  """The last `validation_days` days holding training examples validate.

  Args:
    day_counts: {UTC day number: examples} of the training files.
    validation_days: 0 for no validation split.

  Raises:
    TrainingError: no training examples, or too few days to hold some out.
  """
  days = sorted(d for d, n in day_counts.items() if n > 0)
  if not days:
    raise TrainingError("the training files hold no examples")
  if validation_days == 0:
    return ValidationSplit(None, None, tuple(map(_date, days)), (),
                           sum(day_counts.values()), 0)
  if len(days) < validation_days + 1:
    raise TrainingError(
        f"early stopping holds out the last {validation_days} UTC day(s) of the "
        f"training examples for validation, but they span only {len(days)} day(s) "
        f"({', '.join(map(_date, days))}): give more days of training data or set "
        "validation_days=0 (no early stopping)"
    )
  train, validation = days[:-validation_days], days[-validation_days:]
  cutoff = validation[0] * features.SECONDS_PER_DAY
  return ValidationSplit(
      input_lib.TimeRange(end=cutoff), input_lib.TimeRange(start=cutoff),
      tuple(map(_date, train)), tuple(map(_date, validation)),
      sum(day_counts[d] for d in train), sum(day_counts[d] for d in validation),
  )


# --- Early stopping ---------------------------------------------------------


def validation_metrics(predictions: dict[str, np.ndarray]) -> dict[str, Optional[float]]:
  """logloss and auc of predictions (auc None when one class only)."""
  labels, probabilities = predictions["labels"], predictions["probabilities"]
  try:
    auc = metrics_lib.auc(labels, probabilities)
  except ValueError:
    auc = None
  return {"logloss": metrics_lib.log_loss(labels, probabilities), "auc": auc}


class EarlyStopping(tf.keras.callbacks.Callback):
  """Evaluates the validation set at each epoch end; stops without progress.

  Stops when `metric` has not improved for `patience` epochs and puts the
  best epoch's weights back at the end. Its state (per-epoch metrics, the
  best weights) is saved in `state_dir` by the chief after each epoch, so a
  resumed run continues the same selection. Place it after BackupAndRestore:
  its state is then never ahead of the backup, and an epoch that the backup
  holds but this state lacks (killed between the two saves) is evaluated
  again on resume from the restored weights.
  """

  def __init__(
      self,
      evaluate: Callable[[Any], dict[str, Optional[float]]],
      metric: str,
      patience: int,
      state_dir: Optional[str],
      chief: bool = True,
  ):
    super().__init__()
    self.evaluate = evaluate
    self.metric = metric
    self.higher_is_better = config_lib.EARLY_STOPPING_METRICS[metric]
    self.patience = patience
    self.state_dir = state_dir
    self.chief = chief
    self.history: list[dict[str, Any]] = []
    self.best_epoch: Optional[int] = None
    self.best_value: Optional[float] = None
    self.best_weights: Optional[list[np.ndarray]] = None
    self.stopped_epoch: Optional[int] = None
    self._started = False

  # State on disk: state.json and best_weights.npz, written atomically.
  def _paths(self) -> tuple[str, str]:
    return (os.path.join(self.state_dir, "state.json"),
            os.path.join(self.state_dir, "best_weights.npz"))

  def _load(self) -> None:
    if not self.state_dir:
      return
    state_path, weights_path = self._paths()
    if not tf.io.gfile.exists(state_path):
      return
    with tf.io.gfile.GFile(state_path) as f:
      state = json.load(f)
    self.history = state["history"]
    self.best_epoch, self.best_value = state["best_epoch"], state["best_value"]
    if self.best_epoch is not None:
      with tf.io.gfile.GFile(weights_path, "rb") as f:
        stored = np.load(io.BytesIO(f.read()))
        self.best_weights = [stored[f"w{i}"] for i in range(len(stored.files))]

  def _save(self, weights_changed: bool) -> None:
    if not (self.state_dir and self.chief):
      return
    tf.io.gfile.makedirs(self.state_dir)
    state_path, weights_path = self._paths()
    if weights_changed:
      buffer = io.BytesIO()
      np.savez(buffer, **{f"w{i}": w for i, w in enumerate(self.best_weights)})
      _write_atomically(weights_path, buffer.getvalue())
    _write_atomically(state_path, json.dumps({
        "history": self.history, "best_epoch": self.best_epoch, "best_value": self.best_value,
    }).encode())

  def on_train_begin(self, logs=None):
    self._load()

  def on_epoch_begin(self, epoch, logs=None):
    if self._started:
      return
    self._started = True
    if self.best_epoch is not None and self.best_epoch >= epoch:
      # State of a later epoch than the backup (a finished run's leftovers).
      self.history, self.best_epoch, self.best_value, self.best_weights = [], None, None, None
    self.history = [h for h in self.history if h["epoch"] < epoch]
    if epoch > 0 and not any(h["epoch"] == epoch - 1 for h in self.history):
      self._record(epoch - 1, {})
    if self.history and self._wait() >= self.patience:
      # Killed after deciding to stop: Keras runs one batch before it looks
      # at stop_training; that epoch is not recorded and the best is kept.
      self._stop(epoch - 1)

  def _stop(self, epoch: int) -> None:
    self.stopped_epoch = epoch
    self.model.stop_training = True
    logging.info(
        "early stopping after epoch %d: validation %s has not improved for %d "
        "epoch(s); keeping epoch %d (%s %.4f)", epoch, self.metric, self.patience,
        self.best_epoch, self.metric, self.best_value,
    )

  def _wait(self) -> int:
    last = self.history[-1]["epoch"] if self.history else -1
    return last - self.best_epoch if self.best_epoch is not None else 0

  def _record(self, epoch: int, logs: dict) -> None:
    values = self.evaluate(self.model)
    value = values[self.metric]
    if value is None:
      raise TrainingError(
          f"the validation days hold one class only: {self.metric} is undefined "
          "(use early_stopping_metric=logloss)"
      )
    self.history.append({"epoch": epoch, **values})
    better = self.best_value is None or (
        value > self.best_value if self.higher_is_better else value < self.best_value
    )
    if better:
      self.best_epoch, self.best_value = epoch, value
      self.best_weights = [w.copy() for w in self.model.get_weights()]
    for name, v in values.items():
      if v is not None:
        logs[f"val_{name}"] = v
    self._save(weights_changed=better)

  def on_epoch_end(self, epoch, logs=None):
    if self.stopped_epoch is not None:
      return
    self._record(epoch, logs if logs is not None else {})
    if self._wait() >= self.patience:
      self._stop(epoch)

  def on_train_end(self, logs=None):
    if self.best_weights is not None:
      self.model.set_weights(self.best_weights)
    # Like BackupAndRestore's backup: nothing to resume after a finished fit.
    if self.state_dir and self.chief and tf.io.gfile.exists(self.state_dir):
      tf.io.gfile.rmtree(self.state_dir)

  def summary(self, steps_per_epoch: int) -> dict[str, Any]:
    return {
        "metric": self.metric,
        "patience": self.patience,
        "best_epoch": self.best_epoch,
        "best_step": None if self.best_epoch is None else (self.best_epoch + 1) * steps_per_epoch,
        "best_value": self.best_value,
        "stopped_early": self.stopped_epoch is not None,
        "history": self.history,
    }


# --- The run ----------------------------------------------------------------


@dataclasses.dataclass
class TrainingData:
  """What `run_training` reads; the functions run after the strategy exists.

  Attributes:
    train_files: the resolved training files (fingerprinted).
    count_days: () -> {UTC day: examples} of the training files.
    dataset: (time_range or None, training) -> (features, label) batches of
      the training files: training=True the shuffled, repeated training
      stream; training=False one ordered pass (validation).
  """

  train_files: list[str]
  count_days: Callable[[], dict[int, int]]
  dataset: Callable[[Optional[input_lib.TimeRange], bool], tf.data.Dataset]


@dataclasses.dataclass
class TrainingRun:
  """What `run_training` did (the model holds the kept weights)."""

  model: Any
  strategy: tf.distribute.Strategy
  chief: bool
  progress: ProgressLogger
  split: ValidationSplit
  early_stopping: Optional[EarlyStopping]
  steps_per_epoch: int
  refit_steps: Optional[int] = None

  def summary(self) -> dict[str, Any]:
    """metrics.json entries of the training run."""
    validation: dict[str, Any] = {"enabled": self.early_stopping is not None,
                                  **self.split.to_dict()}
    if self.early_stopping is not None:
      validation.update(self.early_stopping.summary(self.steps_per_epoch))
    return {
        "examples_per_sec_train": self.progress.examples_per_sec,
        "train_seconds": self.progress.train_seconds,
        "train_steps_run": self.progress.steps,
        "train_steps_total": self.progress.total_steps_done,
        "resumed_from_epoch": self.progress.first_epoch,
        "validation": validation,
        "refit_steps": self.refit_steps,
    }


def run_training(
    model_config: config_lib.ModelConfig,
    train_config: config_lib.TrainConfig,
    data: TrainingData,
    run_dir: str,
    backup_dir: str,
    log_dir: str,
    export_fn: Callable[[Any, str], None],
    export_dir: str,
    base_model: Optional[str] = None,
    state_paths: Sequence[str] = (),
    overwrite: bool = False,
    overwrite_hint: str = "",
    tensorboard_update_freq: str = "epoch",
    before_training: Optional[Callable[[], None]] = None,
) -> TrainingRun:
  """Strategy, guard, split, build + compile, fit, chief-only export.

  Args:
    model_config / train_config: the run's settings.
    data: the training data (see TrainingData).
    run_dir: where the run fingerprint goes.
    backup_dir: BackupAndRestore's directory (early stopping's state inside).
    log_dir: TensorBoard's directory.
    export_fn: (model, export_dir) -> None, writes the SavedModel.
    export_dir: where the chief's SavedModel goes (other workers export to
      a temporary directory, then delete it: saving may run collectives).
    base_model: an exported SavedModel to warm-start from (by layer name);
      a backup to resume from overrides it.
    state_paths: further paths of a previous run in run_dir (outputs) that
      need a matching fingerprint; backup_dir always does.
    overwrite: replace another run's state instead of refusing.
    overwrite_hint: how the refusal tells the user to overwrite.
    tensorboard_update_freq: TensorBoard's update_freq.
    before_training: further checks of the inputs, run before the model is
      built (after the strategy exists: MultiWorkerMirroredStrategy must be
      created before any TF op runs).

  Raises:
    TrainingError: another run's state in run_dir, no training examples,
      too few days for the validation split.
  """
  strategy = choose_strategy()
  chief = is_chief(strategy)
  guard_run_dir(
      run_dir, run_fingerprint(model_config, train_config, data.train_files),
      [backup_dir, *state_paths], overwrite, chief, overwrite_hint,
  )
  if before_training is not None:
    before_training()
  split = split_by_days(data.count_days(), train_config.validation_days)
  logging.info("training days %s (%d examples); validation days %s (%d examples)",
               split.train_days, split.train_examples, split.validation_days,
               split.validation_examples)
  with strategy.scope():
    model = model_lib.build_model(model_config)
    compile_model(model, train_config)
  # The statistics' bins from the training days only; a warm start then
  # brings its own bins with the weights that were trained on them.
  model.adapt_statistics(lambda: data.dataset(split.train_range, False))
  if base_model:
    warm_start(model, base_model)
  # BackupAndRestore restores the newest epoch-end state (weights, optimizer,
  # epoch) when a restarted worker finds one; it overrides the warm start.
  callbacks: list[tf.keras.callbacks.Callback] = [
      tf.keras.callbacks.BackupAndRestore(backup_dir)
  ]
  early_stopping = None
  if split.validation_range is not None:
    validation_dataset = data.dataset(split.validation_range, False)
    early_stopping = EarlyStopping(
        lambda m: validation_metrics(predict(m, validation_dataset)),
        train_config.early_stopping_metric, train_config.early_stopping_patience,
        state_dir=os.path.join(backup_dir, VALIDATION_STATE_DIR), chief=chief,
    )
    callbacks.append(early_stopping)
  # After early stopping, so the validation metrics it adds are logged too.
  callbacks.append(tf.keras.callbacks.TensorBoard(log_dir, update_freq=tensorboard_update_freq))
  progress = fit(model, data.dataset(split.train_range, True), train_config, callbacks)
  refit_steps = None
  if early_stopping is not None and train_config.refit:
    model, refit_steps = _refit(
        model_config, train_config, data, split, early_stopping, strategy, backup_dir,
        base_model,
    )

  target = export_dir if chief else tempfile.mkdtemp()
  export_fn(model, target)
  if not chief:
    tf.io.gfile.rmtree(target)
  _, steps_per_epoch = epochs_for(train_config)
  return TrainingRun(model, strategy, chief, progress, split, early_stopping, steps_per_epoch,
                     refit_steps)


REFIT_SUBDIR = "refit"


def _refit(model_config, train_config, data, split, early_stopping, strategy, backup_dir,
           base_model):
  """A fresh model trained on every training day for the selected length.

  The selected length is the best epoch's steps times (all training
  examples / the examples early stopping trained on), so the refit sees
  each example about as often as the selected model did.
  """
  _, steps_per_epoch = epochs_for(train_config)
  best_step = early_stopping.summary(steps_per_epoch)["best_step"] or steps_per_epoch
  total = split.train_examples + split.validation_examples
  steps = max(1, math.ceil(best_step * total / max(split.train_examples, 1)))
  refit_config = train_config.replace(train_steps=steps, validation_days=0, refit=False)
  logging.info("refit: %d steps on every training day (%d examples; best step %d)",
               steps, total, best_step)
  with strategy.scope():
    model = model_lib.build_model(model_config)
    compile_model(model, refit_config)
  model.adapt_statistics(lambda: data.dataset(None, False))
  if base_model:
    warm_start(model, base_model)
  fit(model, data.dataset(None, True), refit_config,
      [tf.keras.callbacks.BackupAndRestore(os.path.join(backup_dir, REFIT_SUBDIR))])
  return model, steps
