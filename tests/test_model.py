"""The model family against independent references on toy data."""

import numpy as np
import pytest
import tensorflow as tf

from preprocessing import features
from preprocessing import transforms
from trainer import branches
from trainer import config
from trainer import input as input_lib
from trainer import model as model_lib
from trainer import toy_data

from tests import model_helpers

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


SIZES = dict(max_seq_len=L, top_k=16, jit_compile=False,
             embedding_dim=16, head_dim=8, mlp_units=(32,),
             use_item_ids=True, retrieval_embedding="item")


def small_config(variant, **overrides):
  return model_helpers.small_config(SIZES, variant, **overrides)


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
  # Every layer but the branch has its namesake; the branches share the
  # attention (eta adds SimHash and top-k, which have no trained weights).
  assert copy_weights_by_layer_name(eta, full) == sum(
      1 for layer in full.layers if layer.weights
  ) - 1
  full.long_branch.attention.set_weights(eta.long_branch.attention.get_weights())
  np.testing.assert_allclose(logits_of(eta, inputs), logits_of(full, inputs), atol=1e-5)


def copy_weights_by_layer_name(source, target):
  source_layers = {layer.name: layer for layer in source.layers}
  copied = 0
  for layer in target.layers:
    if layer.name in source_layers and layer.weights and layer.name != "long_branch":
      layer.set_weights(source_layers[layer.name].get_weights())
      copied += 1
  return copied


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
  indices, valid = branches.same_category_recent(
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
  branch = model.long_branch
  ids = inputs[features.HIST_ITEM_IDS.name]
  projection = branch.simhash.projection.numpy().copy()

  def reference():
    table = model.feature_embeddings.item_embedding.embeddings.numpy()
    return numpy_pack(table[ids.numpy()] @ projection > 0)

  np.testing.assert_array_equal(branch.signatures(ids, ids).numpy(), reference())
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-2), run_eagerly=True)
  before = branch.signatures(ids, ids).numpy()
  model.fit(tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(64), verbose=0)
  after = branch.signatures(ids, ids).numpy()
  np.testing.assert_array_equal(branch.simhash.projection.numpy(), projection)
  np.testing.assert_array_equal(after, reference())
  assert (before != after).any()  # recomputed from the trained embeddings


@pytest.mark.parametrize("variant,overrides", [
    ("sdim", {}),
    ("eta", {"retrieval_embedding": "item_category"}),
    ("eta", {"retrieval_embedding": "item_category", "use_item_ids": False}),
])
def test_pair_signatures_equal_per_position_hashing(variant, overrides, batch):
  inputs, _ = batch
  model = model_lib.build_model(small_config(variant, **overrides))
  embeddings = model.feature_embeddings
  items = inputs[features.HIST_ITEM_IDS.name]
  categories = inputs[features.HIST_CATEGORY_IDS.name]
  if variant == "sdim":
    hasher, vectors = model.long_branch.aggregation.simhash, embeddings.query
  else:
    hasher, vectors = model.long_branch.simhash, embeddings.retrieval_vectors
  width = 2 * 16 if overrides.get("use_item_ids", True) else 16
  assert vectors(items, categories).shape[-1] == width
  np.testing.assert_array_equal(
      branches.hash_pairs(hasher, vectors, items, categories).numpy(),
      hasher(vectors(items, categories)).numpy(),
  )


def test_without_item_ids_the_model_has_no_item_table_and_ignores_item_ids(batch):
  inputs, _ = batch
  model = model_lib.build_model(small_config(
      "eta", use_item_ids=False, retrieval_embedding="item_category", long_statistics=False))
  assert model.feature_embeddings.item_embedding is None
  assert not any("item_embedding" in w.name for w in model.weights)
  other = dict(inputs)
  for name in (features.ITEM_ID.name, features.HIST_ITEM_IDS.name):
    other[name] = tf.where(inputs[name] > 0, inputs[name] % 97 + 1, 0)
  np.testing.assert_allclose(logits_of(model, inputs), logits_of(model, other), atol=1e-6)


def test_short_branch_reads_only_the_last_positions(batch):
  inputs, _ = batch
  model = model_lib.build_model(small_config("din", short_seq_len=10, din_hidden_units=(8,)))
  length = inputs[transforms.HIST_LENGTH].numpy()
  assert (length > 11).any()

  def with_items_changed(positions):
    values = inputs[features.HIST_ITEM_IDS.name].numpy().copy()
    values[:, positions] = np.where(values[:, positions] > 0,
                                    values[:, positions] % 1000 + 3, 0)
    return dict(inputs, **{features.HIST_ITEM_IDS.name: tf.constant(values)})

  base = logits_of(model, inputs)
  np.testing.assert_allclose(logits_of(model, with_items_changed(slice(0, L - 10))), base,
                             atol=1e-6)
  assert np.abs(logits_of(model, with_items_changed(slice(L - 10, L))) - base).max() > 1e-4


@pytest.mark.parametrize("variant", ["eta", "sim_hard", "sdim", "exact_topk"])
def test_xla_gives_the_same_predictions(variant, batch):
  inputs, _ = batch
  plain = model_lib.build_model(small_config(variant))
  compiled = model_lib.build_model(small_config(variant, jit_compile=True, seed=5))
  compiled.set_weights(plain.get_weights())

  @tf.function
  def predict(features_):
    return compiled(features_, training=False)

  np.testing.assert_allclose(
      logits_of(plain, inputs), predict(inputs).numpy(), rtol=1e-4, atol=1e-5
  )


def test_signature_table_matches_item_signatures():
  model = model_lib.build_model(small_config("eta"))
  table = model.long_branch.signature_table().numpy()
  assert table.shape == (features.ITEM_ID.buckets, 1)
  ids = tf.constant([[1, 5, 77], [0, 262143, 5]], tf.int64)
  np.testing.assert_array_equal(model.long_branch.signatures(ids, ids).numpy(),
                                table[ids.numpy()])


def test_model_config_round_trip():
  model = model_lib.build_model(small_config("sdim", dropout=0.2))
  rebuilt = model_lib.EtaModel.from_config(model.get_config())
  assert rebuilt.model_config == model.model_config


def test_top_k_larger_than_history_is_refused():
  with pytest.raises(config.ConfigError, match="top_k"):
    small_config("eta", top_k=L + 1)


def test_embedding_penalty_counts_each_used_row_once(batch):
  inputs, labels = batch
  model = model_lib.build_model(
      small_config("din", embedding_l2=0.5, embedding_init_stddev=1.0))
  items = np.concatenate([inputs["item_id"].numpy().ravel(), inputs["hist_item_ids"].numpy().ravel()])
  cats = np.concatenate([inputs["category_id"].numpy().ravel(),
                         inputs["hist_category_ids"].numpy().ravel()])
  item_table = model.feature_embeddings.item_embedding.embeddings.numpy()
  category_table = model.feature_embeddings.category_embedding.embeddings.numpy()
  rows = [item_table[i] for i in set(items.tolist()) - {0}]
  rows += [category_table[c] for c in set(cats.tolist()) - {0}]
  # The mean squared entry of the distinct rows in use (about stddev**2).
  want = float(np.mean(np.square(rows)))
  assert 0.5 < want < 2.0
  assert float(model.embedding_penalty(inputs)) == pytest.approx(want, rel=1e-5)
  # The training loss adds weight * penalty to the mean log loss; evaluation does not.
  with_penalty = float(model.compute_loss((inputs, labels), training=True))
  without = float(model.compute_loss((inputs, labels), training=False))
  assert with_penalty - without == pytest.approx(0.5 * want, rel=1e-4)
