"""Training loop pieces: warm start by name, resume from BackupAndRestore, strategy."""

import json

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
                mlp_units=(8,), din_hidden_units=(8,), jit_compile=False, seed=seed)
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
  fresh_attention = [w.numpy() for w in target.long_attention.weights]
  fresh_mlp = target.mlp_layers[0].kernel.numpy()

  loaded = training.warm_start(target, export_dir)

  assert {"item_embedding", "category_embedding", "short_attention", "logit_layer"} <= set(loaded)
  # eta's own layers, and the MLP whose input width differs, stay fresh.
  assert not {"long_attention", "simhash", "mlp_layers", "time_gap_embedding"} & set(loaded)
  np.testing.assert_array_equal(
      target.item_embedding.embeddings.numpy(), source.item_embedding.embeddings.numpy()
  )
  for src, dst in zip(source.short_attention.weights, target.short_attention.weights):
    np.testing.assert_array_equal(src.numpy(), dst.numpy())
  for before, after in zip(fresh_attention, target.long_attention.weights):
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
