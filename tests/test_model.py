"""The model family against independent references on toy data."""

import numpy as np
import pytest
import tensorflow as tf

from preprocessing import features
from preprocessing import transforms
from trainer import config
from trainer import input as input_lib
from trainer import model as model_lib
from trainer import toy_data

L = 64
VARIANTS = config.VARIANTS


@pytest.fixture(scope="module")
def batch():
  examples = toy_data.make_examples(
      toy_data.ToyDataConfig(num_examples=256, max_history=90, seed=3)
  )
  serialized = tf.constant([toy_data.serialize(e) for e in examples])
  transformed = input_lib.parse_and_transform(serialized, L)
  labels = transformed.pop(features.LABEL_KEY)
  return transformed, labels


def small_config(variant, **overrides):
  values = dict(model=variant, max_seq_len=L, top_k=16, jit_compile=False,
                embedding_dim=16, head_dim=8, mlp_units=(32,))
  values.update(overrides)
  return config.ModelConfig(**values)


def copy_weights_by_layer_name(source, target):
  source_layers = {layer.name: layer for layer in source.layers}
  copied = 0
  for layer in target.layers:
    if layer.name in source_layers and layer.weights:
      layer.set_weights(source_layers[layer.name].get_weights())
      copied += 1
  return copied


def logits_of(model, inputs):
  return model(inputs, training=False).numpy()


def log_loss(labels, logits):
  p = 1 / (1 + np.exp(-logits.astype(np.float64)))
  p = np.clip(p, 1e-7, 1 - 1e-7)
  return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_trains_and_its_loss_falls(variant, batch):
  inputs, labels = batch
  model = model_lib.build_model(small_config(variant))
  # Eager steps: tracing a train step costs more than these few steps
  # (graph mode and XLA are covered by test_xla_* and tests/test_train.py).
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-2), run_eagerly=True)
  before = log_loss(labels.numpy(), logits_of(model, inputs))
  dataset = tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(64).repeat()
  history = model.fit(dataset, steps_per_epoch=12, epochs=1, verbose=0)
  after = log_loss(labels.numpy(), logits_of(model, inputs))
  assert np.isfinite(history.history["loss"]).all()
  assert after < before - 0.05, (before, after)


def test_eta_with_k_equal_to_l_equals_full_attention(batch):
  inputs, _ = batch
  eta = model_lib.build_model(small_config("eta", top_k=L))
  full = model_lib.build_model(small_config("full_attention", seed=1))
  # Every layer of full_attention has its namesake in eta (eta adds SimHash).
  assert copy_weights_by_layer_name(eta, full) == sum(
      1 for layer in full.layers if layer.weights
  )
  np.testing.assert_allclose(logits_of(eta, inputs), logits_of(full, inputs), atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_padded_positions_do_not_change_predictions(variant, batch):
  inputs, _ = batch
  model = model_lib.build_model(small_config(variant))
  length = inputs[transforms.HIST_LENGTH].numpy()
  padding = np.arange(L)[None, :] < L - length[:, None]
  assert padding.any() and (~padding).any()
  rng = np.random.default_rng(0)
  garbage = dict(inputs)
  for name, high in (
      (features.HIST_ITEM_IDS.name, features.ITEM_ID.buckets),
      (features.HIST_CATEGORY_IDS.name, features.CATEGORY_ID.buckets),
      (transforms.HIST_TIME_GAP_BUCKETS, features.TIME_GAP_BUCKETS),
      (features.HIST_BEHAVIOR_TYPES.name, len(features.BEHAVIOR_TYPES) + 1),
  ):
    values = inputs[name].numpy().copy()
    values[padding] = rng.integers(1, high, padding.sum())
    garbage[name] = tf.constant(values)
  np.testing.assert_allclose(
      logits_of(model, inputs), logits_of(model, garbage), atol=1e-6
  )
  # The check can fail: the same change at a real position moves predictions.
  moved = dict(inputs)
  values = inputs[features.HIST_ITEM_IDS.name].numpy().copy()
  values[:, -1] = np.where(length > 0, values[:, -1] % 1000 + 7, values[:, -1])
  moved[features.HIST_ITEM_IDS.name] = tf.constant(values)
  assert np.abs(logits_of(model, inputs) - logits_of(model, moved)).max() > 1e-4


def test_sim_hard_selects_the_k_most_recent_of_the_category():
  rng = np.random.default_rng(7)
  batch_size, length, k = 20, 30, 5
  categories = rng.integers(1, 4, (batch_size, length))
  hist_length = rng.integers(0, length + 1, batch_size)
  mask = np.arange(length)[None, :] >= length - hist_length[:, None]
  candidate = rng.integers(1, 4, batch_size)
  indices, valid = model_lib.same_category_recent(
      tf.constant(candidate, tf.int64), tf.constant(categories, tf.int64),
      tf.constant(mask), k,
  )
  for row in range(batch_size):
    matching = [p for p in range(length) if mask[row, p] and categories[row, p] == candidate[row]]
    want = sorted(matching, reverse=True)[:k]  # most recent first
    got = [int(i) for i, v in zip(indices[row].numpy(), valid[row].numpy()) if v]
    assert got == want
    assert valid[row].numpy().tolist() == [True] * len(want) + [False] * (k - len(want))


def numpy_pack(bits):
  """bool [..., m] -> int64 words, bit j of word w = bits[64 w + j]."""
  m = bits.shape[-1]
  words = -(-m // 64)
  padded = np.zeros(bits.shape[:-1] + (words * 64,), bool)
  padded[..., :m] = bits
  out = np.zeros(bits.shape[:-1] + (words,), np.uint64)
  for j in range(words * 64):
    out[..., j // 64] |= padded[..., j].astype(np.uint64) << np.uint64(j % 64)
  return out.view(np.int64)


def test_item_signatures_equal_numpy_simhash_and_follow_training(batch):
  inputs, labels = batch
  model = model_lib.build_model(small_config("eta"))
  ids = inputs[features.HIST_ITEM_IDS.name]
  projection = model.simhash.projection.numpy().copy()

  def reference():
    table = model.item_embedding.embeddings.numpy()
    return numpy_pack(table[ids.numpy()] @ projection > 0)

  np.testing.assert_array_equal(model.item_signatures(ids).numpy(), reference())
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-2), run_eagerly=True)
  before = model.item_signatures(ids).numpy()
  model.fit(tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(64), verbose=0)
  after = model.item_signatures(ids).numpy()
  np.testing.assert_array_equal(model.simhash.projection.numpy(), projection)
  np.testing.assert_array_equal(after, reference())
  assert (before != after).any()  # recomputed from the trained embeddings


def test_sdim_pair_signatures_equal_per_position_hashing(batch):
  inputs, _ = batch
  model = model_lib.build_model(small_config("sdim"))
  items = inputs[features.HIST_ITEM_IDS.name]
  categories = inputs[features.HIST_CATEGORY_IDS.name]
  rows = tf.concat([model.item_embedding(items), model.category_embedding(categories)], -1)
  np.testing.assert_array_equal(
      model.item_category_signatures(items, categories).numpy(),
      model.sdim_aggregation.simhash(rows).numpy(),
  )


def test_short_branch_reads_the_last_positions(batch):
  inputs, _ = batch
  model = model_lib.build_model(small_config("din", short_seq_len=10, din_hidden_units=(8,)))
  item = inputs[features.ITEM_ID.name]
  query = tf.concat(
      [model.item_embedding(item), model.category_embedding(inputs[features.CATEGORY_ID.name])],
      -1,
  ).numpy()
  history = {name: inputs[name] for name in transforms.SEQUENCE_OUTPUTS}
  length = inputs[transforms.HIST_LENGTH].numpy()
  mask = model_lib.valid_mask(tf.constant(length), L)
  got = model.short_interest(tf.constant(query), history, mask).numpy()
  # numpy DIN over positions [L - 10, L) with the layer's weights.
  items = history[features.HIST_ITEM_IDS.name].numpy()[:, -10:]
  cats = history[features.HIST_CATEGORY_IDS.name].numpy()[:, -10:]
  keys = np.concatenate(
      [model.item_embedding.embeddings.numpy()[items],
       model.category_embedding.embeddings.numpy()[cats]], -1,
  )
  q = np.broadcast_to(query[:, None, :], keys.shape)
  hidden = np.concatenate([q, keys, q - keys, q * keys], -1)
  (w0, b0), (w1, b1) = (
      model.short_attention.hidden_layers[0].get_weights(),
      model.short_attention.score_layer.get_weights(),
  )
  hidden = 1 / (1 + np.exp(-(hidden @ w0 + b0)))
  scores = (hidden @ w1 + b1)[..., 0]
  real = np.arange(L - 10, L)[None, :] >= L - length[:, None]
  want = np.sum((scores * real)[..., None] * keys, axis=1)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant", ["eta", "sim_hard", "sdim", "exact_topk"])
def test_xla_gives_the_same_predictions(variant, batch):
  inputs, _ = batch
  plain = model_lib.build_model(small_config(variant))
  compiled = model_lib.build_model(small_config(variant, jit_compile=True, seed=5))
  copy_weights_by_layer_name(plain, compiled)

  @tf.function
  def predict(features_):
    return compiled(features_, training=False)

  np.testing.assert_allclose(
      logits_of(plain, inputs), predict(inputs).numpy(), rtol=1e-4, atol=1e-5
  )


def test_signature_table_matches_item_signatures():
  model = model_lib.build_model(small_config("eta"))
  table = model.signature_table().numpy()
  assert table.shape == (features.ITEM_ID.buckets, 1)
  ids = tf.constant([[1, 5, 77], [0, 262143, 5]], tf.int64)
  np.testing.assert_array_equal(model.item_signatures(ids).numpy(), table[ids.numpy()])


def test_model_config_round_trip():
  model = model_lib.build_model(small_config("sdim", dropout=0.2))
  rebuilt = model_lib.EtaModel.from_config(model.get_config())
  assert rebuilt.model_config == model.model_config


def test_top_k_larger_than_history_is_refused():
  with pytest.raises(config.ConfigError, match="top_k"):
    small_config("eta", top_k=L + 1)


def test_embedding_penalty_counts_each_used_row_once(batch):
  inputs, labels = batch
  model = model_lib.build_model(small_config("din", embedding_l2=0.5))
  items = np.concatenate([inputs["item_id"].numpy().ravel(), inputs["hist_item_ids"].numpy().ravel()])
  cats = np.concatenate([inputs["category_id"].numpy().ravel(),
                         inputs["hist_category_ids"].numpy().ravel()])
  item_table = model.item_embedding.embeddings.numpy()
  category_table = model.category_embedding.embeddings.numpy()
  want = sum(float(np.sum(item_table[i] ** 2)) for i in set(items.tolist()) - {0})
  want += sum(float(np.sum(category_table[c] ** 2)) for c in set(cats.tolist()) - {0})
  assert float(model.embedding_penalty(inputs)) == pytest.approx(want, rel=1e-5)
  # The training loss adds it (per example of the batch); evaluation does not.
  with_penalty = float(model.compute_loss((inputs, labels), training=True))
  without = float(model.compute_loss((inputs, labels), training=False))
  assert with_penalty - without == pytest.approx(0.5 * want / labels.shape[0], rel=1e-4)
