"""Training loop pieces: warm start by name, resume from BackupAndRestore, strategy,
the validation split, the run-dir guard and early stopping."""

import datetime
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from preprocessing import features
from trainer import config
from trainer import export
from trainer import input as input_lib
from trainer import model as model_lib
from trainer import toy_data
from trainer import training

L = 64


def small(variant, seed, **overrides):
  values = dict(model=variant, max_seq_len=L, top_k=8, embedding_dim=8, head_dim=8,
                mlp_units=(8,), din_hidden_units=(8,), jit_compile=False, seed=seed,
                use_item_ids=True, retrieval_embedding="item")
  values.update(overrides)
  return config.ModelConfig(**values)


def toy_dataset():
  examples = toy_data.make_examples(toy_data.ToyDataConfig(num_examples=64, max_history=70))
  inputs = input_lib.parse_and_transform(
      tf.constant([toy_data.serialize(e) for e in examples]), L
  )
  labels = inputs.pop(features.LABEL_KEY)
  return tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(16).repeat()


def test_warm_start_loads_matching_layers_by_name_only(tmp_path):
  source = model_lib.build_model(small("din", seed=1))
  export_dir = str(tmp_path / "din")
  export.export_standalone(source, export_dir, L)
  target = model_lib.build_model(small("eta", seed=2))
  fresh_attention = [w.numpy() for w in target.long_branch.attention.weights]
  fresh_mlp = target.mlp_layers[0].kernel.numpy()

  loaded = training.warm_start(target, export_dir)

  assert {"feature_embeddings.item_embedding", "feature_embeddings.category_embedding",
          "short_attention", "logit_layer"} <= set(loaded)
  # eta's long branch (din has none), the side embeddings din never built,
  # and the MLP whose input width differs, stay fresh.
  assert not {"long_branch", "mlp_layers", "feature_embeddings",
              "feature_embeddings.time_gap_embedding"} & set(loaded)
  for table in ("item_embedding", "category_embedding"):
    np.testing.assert_array_equal(
        getattr(target.feature_embeddings, table).embeddings.numpy(),
        getattr(source.feature_embeddings, table).embeddings.numpy())
  for src, dst in zip(source.short_attention.weights, target.short_attention.weights):
    np.testing.assert_array_equal(src.numpy(), dst.numpy())
  for before, after in zip(fresh_attention, target.long_branch.attention.weights):
    np.testing.assert_array_equal(before, after.numpy())
  np.testing.assert_array_equal(fresh_mlp, target.mlp_layers[0].kernel.numpy())


class _Preempted(RuntimeError):
  pass


def test_backup_and_restore_resumes_after_a_crash(tmp_path):
  backup_dir = str(tmp_path / "backup")
  train_config = config.TrainConfig(batch_size=16, train_steps=12, steps_per_epoch=4)
  snapshot = {}

  class CrashAfterSecondEpoch(tf.keras.callbacks.Callback):

    def on_epoch_end(self, epoch, logs=None):
      if epoch == 1:
        snapshot["weights"] = [w.numpy() for w in self.model.weights]
        raise _Preempted("simulated preemption")

  first = model_lib.build_model(small("din", seed=1))
  first.compile(optimizer=tf.keras.optimizers.Adam(1e-2), run_eagerly=True)
  with pytest.raises(_Preempted):
    training.fit(first, toy_dataset(), train_config,
                 [tf.keras.callbacks.BackupAndRestore(backup_dir), CrashAfterSecondEpoch()])

  seen = {}

  class RecordStart(tf.keras.callbacks.Callback):

    def on_epoch_begin(self, epoch, logs=None):
      if "epoch" not in seen:
        seen["epoch"] = epoch
        seen["weights"] = [w.numpy() for w in self.model.weights]

  restarted = model_lib.build_model(small("din", seed=9))
  restarted.compile(optimizer=tf.keras.optimizers.Adam(1e-2), run_eagerly=True)
  progress = training.fit(restarted, toy_dataset(), train_config,
                          [tf.keras.callbacks.BackupAndRestore(backup_dir), RecordStart()])
  assert seen["epoch"] == 2  # epochs 0 and 1 were done before the crash
  assert progress.steps == 4  # only the last epoch ran
  for want, got in zip(snapshot["weights"], seen["weights"]):
    np.testing.assert_array_equal(want, got)


def test_epochs_cover_the_requested_steps():
  for steps, per_epoch, want in ((12, 4, (3, 4)), (10, 4, (3, 4)), (5, 100, (1, 5)), (7, 7, (1, 7))):
    epochs, steps_per_epoch = training.epochs_for(
        config.TrainConfig(train_steps=steps, steps_per_epoch=per_epoch)
    )
    assert (epochs, steps_per_epoch) == want
    assert steps <= epochs * steps_per_epoch < steps + epochs


def test_strategy_defaults_to_one_device_without_a_cluster():
  single = json.dumps({"cluster": {"worker": ["localhost:1234"]},
                       "task": {"type": "worker", "index": 0}})
  strategy = training.choose_strategy(single)
  assert strategy.num_replicas_in_sync == 1
  assert training.is_chief(strategy)
  assert training.choose_strategy("").num_replicas_in_sync == 1


# --- validation split, run guard, early stopping ---------------------------


def utc_date(day):
  return (datetime.date(1970, 1, 1) + datetime.timedelta(days=day)).isoformat()


def test_validation_is_the_newest_days_holding_training_examples():
  counts = {19000: 3, 19001: 5, 19003: 2}  # no example on day 19002
  split = training.split_by_days(counts, 1)
  assert split.train_range == input_lib.TimeRange(end=19003 * 86_400)
  assert split.validation_range == input_lib.TimeRange(start=19003 * 86_400)
  assert (split.train_examples, split.validation_examples) == (8, 2)
  assert split.validation_days == (utc_date(19003),)
  assert split.train_days == (utc_date(19000), utc_date(19001))
  two = training.split_by_days(counts, 2)
  assert two.validation_days == (utc_date(19001), utc_date(19003))
  assert (two.train_examples, two.validation_examples) == (3, 7)
  everything = training.split_by_days(counts, 0)
  assert everything.train_range is None and everything.validation_range is None
  assert everything.train_examples == 10
  with pytest.raises(training.TrainingError, match="span only 3 day") as error:
    training.split_by_days(counts, 3)
  assert "\n" not in str(error.value) and "validation_days=0" in str(error.value)
  with pytest.raises(training.TrainingError, match="no examples"):
    training.split_by_days({}, 1)


def test_a_run_dir_is_resumed_only_by_the_run_that_wrote_it(tmp_path):
  data = tmp_path / "train.tfrecord.gz"
  toy_data.write_tfrecords(str(data), toy_data.make_examples(toy_data.ToyDataConfig(num_examples=4)))
  run_dir = str(tmp_path / "run")
  backup = os.path.join(run_dir, "backup")
  model_config, train_config = small("din", seed=0), config.TrainConfig()

  def guard(train_config=train_config, overwrite=False, model_config=model_config):
    fingerprint = training.run_fingerprint(model_config, train_config, [str(data)])
    training.guard_run_dir(run_dir, fingerprint, [backup], overwrite, chief=True)

  guard()  # fresh: writes the fingerprint
  os.makedirs(backup)
  guard()  # the same run resumes
  guard(train_config=train_config.replace(eval_steps=3))  # eval settings do not count
  with pytest.raises(training.TrainingError, match="differs in learning_rate") as error:
    guard(train_config=train_config.replace(learning_rate=0.5))
  assert "\n" not in str(error.value)
  with pytest.raises(training.TrainingError, match="differs in .*model"):
    guard(model_config=small("eta", seed=0))
  toy_data.write_tfrecords(str(data), toy_data.make_examples(toy_data.ToyDataConfig(num_examples=5)))
  with pytest.raises(training.TrainingError, match="training files"):
    guard()
  guard(overwrite=True)  # deletes the other run's backup, takes the dir over
  assert not os.path.exists(backup)
  guard()
  # State without a fingerprint is someone else's too.
  os.remove(os.path.join(run_dir, training.FINGERPRINT_FILE))
  os.makedirs(backup)
  with pytest.raises(training.TrainingError, match="unknown settings"):
    guard()


def validation_set():
  examples = toy_data.make_examples(toy_data.ToyDataConfig(num_examples=48, max_history=70, seed=5))
  inputs = input_lib.parse_and_transform(
      tf.constant([toy_data.serialize(e) for e in examples]), L
  )
  labels = inputs.pop(features.LABEL_KEY)
  return tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(16)


def test_early_stopping_state_survives_a_crash_between_the_two_saves(tmp_path):
  backup_dir = str(tmp_path / "backup")
  state_dir = os.path.join(backup_dir, "validation")
  train_config = config.TrainConfig(batch_size=16, train_steps=24, steps_per_epoch=4)
  validation = validation_set()

  def evaluate(m):
    return training.validation_metrics(training.predict(m, validation))

  snapshot = {}

  class CrashAfterBackupOfEpoch2(tf.keras.callbacks.Callback):

    def on_epoch_end(self, epoch, logs=None):
      if epoch == 2:
        snapshot["weights"] = self.model.get_weights()
        raise _Preempted("killed after BackupAndRestore saved, before early stopping did")

  first = model_lib.build_model(small("din", seed=1))
  first.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
  stopper = training.EarlyStopping(evaluate, "logloss", 100, state_dir)
  with pytest.raises(_Preempted):
    training.fit(first, toy_dataset(), train_config,
                 [tf.keras.callbacks.BackupAndRestore(backup_dir), CrashAfterBackupOfEpoch2(),
                  stopper])
  assert [h["epoch"] for h in stopper.history] == [0, 1]
  want_epoch_2 = evaluate_with(snapshot["weights"], evaluate)

  restarted = model_lib.build_model(small("din", seed=9))
  restarted.compile(optimizer=tf.keras.optimizers.Adam(1e-2))
  resumed = training.EarlyStopping(evaluate, "logloss", 100, state_dir)
  progress = training.fit(restarted, toy_dataset(), train_config,
                          [tf.keras.callbacks.BackupAndRestore(backup_dir), resumed])
  epochs = [h["epoch"] for h in resumed.history]
  assert epochs == [0, 1, 2, 3, 4, 5]
  assert resumed.history[:2] == stopper.history  # carried over, not recomputed
  # Epoch 2 was evaluated again on resume from the weights the backup held.
  assert resumed.history[2]["logloss"] == pytest.approx(want_epoch_2["logloss"], abs=1e-6)
  losses = [h["logloss"] for h in resumed.history]
  assert resumed.best_epoch == int(np.argmin(losses))
  assert resumed.best_value == min(losses)
  # The best epoch's weights are what the model holds at the end.
  assert evaluate(restarted)["logloss"] == pytest.approx(resumed.best_value, abs=1e-6)
  # Progress counts the whole run; this process ran the last three epochs.
  assert (progress.steps, progress.total_steps_done) == (12, 24)
  assert not os.path.exists(state_dir)  # nothing to resume after a finished fit


def test_averaged_weights_are_set_at_the_epoch_end():
  """ema_momentum: at an epoch's end the model holds the moving average of its
  weights after every step, starting from the initial weights, with the
  momentum min(m, (1 + t) / (10 + t)) at step t. Reference: the same steps
  with plain Adam (the raw trajectory is the same until the average is set),
  averaged in numpy."""
  momentum, steps = 0.5, 6

  def run(ema_momentum):
    train_config = config.TrainConfig(batch_size=16, train_steps=steps, steps_per_epoch=steps,
                                      ema_momentum=ema_momentum)
    model = model_lib.build_model(small("din", seed=2))
    training.compile_model(model, train_config)
    model(next(iter(toy_dataset()))[0])
    after_step = [[v.numpy() for v in model.trainable_variables]]

    class Record(tf.keras.callbacks.Callback):
      def on_train_batch_end(self, batch, logs=None):
        after_step.append([v.numpy() for v in model.trainable_variables])

    training.fit(model, toy_dataset(), train_config, [Record()])
    return after_step

  raw = run(0.0)
  averaged = run(momentum)
  for got, want in zip(averaged[0], raw[0]):
    np.testing.assert_array_equal(got, want)  # same start
  expected = raw[0]
  for step, weights in enumerate(raw[1:]):
    m = min(momentum, (1 + step) / (10 + step))  # 0.1, 0.18, 0.25, ... then 0.5
    expected = [m * a + (1 - m) * w for a, w in zip(expected, weights)]
  for got, want, last in zip(averaged[-1], expected, raw[-1]):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  # The average is not the last step's weights (the test can fail).
  assert any(not np.allclose(e, r, atol=1e-6) for e, r in zip(expected, raw[-1]))


def evaluate_with(weights, evaluate):
  model = model_lib.build_model(small("din", seed=3))
  model.set_weights(weights)
  return evaluate(model)


def test_early_stopping_stops_after_patience_epochs_without_progress(tmp_path):
  train_config = config.TrainConfig(batch_size=16, train_steps=400, steps_per_epoch=4)
  validation = validation_set()
  model = model_lib.build_model(small("din", seed=1))
  # A large step size overfits 64 examples within a few epochs.
  model.compile(optimizer=tf.keras.optimizers.Adam(0.1))
  stopper = training.EarlyStopping(
      lambda m: training.validation_metrics(training.predict(m, validation)),
      "auc", 2, state_dir=None)
  progress = training.fit(model, toy_dataset(), train_config, [stopper])
  aucs = [h["auc"] for h in stopper.history]
  best = int(np.argmax(aucs))
  assert stopper.best_epoch == best and stopper.stopped_epoch is not None
  assert len(aucs) == best + 1 + 2  # stopped exactly `patience` epochs after the best
  assert all(a <= aucs[best] for a in aucs[best + 1:])
  assert progress.steps == 4 * len(aucs) < 400
