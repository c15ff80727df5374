"""Decoupled attention embeddings (`ModelConfig.decoupled_attention`).

Retrieval (eta's SimHash, exact_topk's dot product) and sam's scorer read
the attention tables; the head and the attention values read the
representation tables; eta's exported signature table hashes the attention
item table. References: the embedding tables' own rows, a SimHash computed
here from the projection, and the model's batch path for `rank`.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from preprocessing import features
from trainer import config
from trainer import input as input_lib
from trainer import serving_signatures

from tests import model_helpers

L = 24
T0 = 1_793_404_800


SIZES = dict(
    max_seq_len=L, short_seq_len=6, top_k=5, embedding_dim=6,
    side_embedding_dim=3, num_heads=2, head_dim=4, din_hidden_units=(8,), mlp_units=(16,),
    jit_compile=False, use_item_ids=True, retrieval_embedding="item",
    decoupled_attention=True, attention_embedding_dim=4,
)


def small_config(variant: str, **overrides) -> config.ModelConfig:
  return model_helpers.small_config(SIZES, variant, **overrides)


def rank_inputs(length: int, seed: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(seed)
  items = rng.integers(1, 30, length)
  return {
      features.HIST_ITEM_IDS.name: items,
      features.HIST_CATEGORY_IDS.name: items % 5,
      features.HIST_TIMESTAMPS.name: T0 - np.sort(rng.integers(1, 10**7, length))[::-1],
      features.HIST_BEHAVIOR_TYPES.name: rng.integers(0, len(features.BEHAVIOR_TYPES), length),
      features.RANK_ITEM_IDS_KEY: np.array([3, 7, 11, 3, 25, 1000]),
      features.RANK_CATEGORY_IDS_KEY: np.array([3, 2, 1, 3, 0, 4]),
      features.RANK_REQUEST_TIMESTAMP_KEY: np.array(T0),
  }


def transformed_examples(inputs) -> dict[str, tf.Tensor]:
  """One training-format tf.Example per candidate, parsed and transformed."""
  examples = []
  for item, category in zip(inputs[features.RANK_ITEM_IDS_KEY],
                            inputs[features.RANK_CATEGORY_IDS_KEY]):
    example = tf.train.Example()
    values = {features.USER_ID.name: [0], features.ITEM_ID.name: [int(item)],
              features.CATEGORY_ID.name: [int(category)],
              features.TIMESTAMP.name: [int(inputs[features.RANK_REQUEST_TIMESTAMP_KEY])]}
    for feature in features.RANK_HISTORY_FEATURES:
      values[feature.name] = [int(v) for v in inputs[feature.name]]
    for name, ints in values.items():
      example.features.feature[name].int64_list.value.extend(ints)
    examples.append(example.SerializeToString())
  return input_lib.parse_and_transform(tf.constant(examples), L, include_label=False)


def direct_probabilities(model, inputs) -> np.ndarray:
  """The batch path on one tf.Example per candidate."""
  return tf.sigmoid(model(transformed_examples(inputs), training=False)).numpy()


def frozen_rank(model):
  with model.xla_disabled(), model.frozen_for_serving():
    return serving_signatures.rank_function(model)


def numpy_simhash(vectors: np.ndarray, projection: np.ndarray) -> np.ndarray:
  """Sign bits of vectors @ projection, packed little-endian into int64 words."""
  bits = vectors.astype(np.float64) @ projection.astype(np.float64) > 0
  words = np.zeros((len(vectors), -(-bits.shape[1] // 64)), np.uint64)
  for j in range(bits.shape[1]):
    words[:, j // 64] |= bits[:, j].astype(np.uint64) << np.uint64(j % 64)
  return words.view(np.int64)


def test_tables_read_by_each_part():
  model = model_helpers.randomized_model(small_config("eta"))
  embeddings = model.feature_embeddings
  item = tf.constant([1, 5, 9], tf.int64)
  category = tf.constant([2, 3, 4], tf.int64)
  retrieved = embeddings.retrieval_vectors(item, category).numpy()
  # eta with item retrieval never reads the attention category table; this
  # call creates it.
  scored = embeddings.attention_query(item, category).numpy()
  attention_items = embeddings.attention_item_embedding.embeddings.numpy()
  attention_categories = embeddings.attention_category_embedding.embeddings.numpy()
  np.testing.assert_array_equal(retrieved, attention_items[[1, 5, 9]])
  np.testing.assert_array_equal(
      scored,
      np.concatenate([attention_items[[1, 5, 9]], attention_categories[[2, 3, 4]]], -1))
  np.testing.assert_array_equal(
      embeddings.query(item, category).numpy(),
      np.concatenate([embeddings.item_embedding.embeddings.numpy()[[1, 5, 9]],
                      embeddings.category_embedding.embeddings.numpy()[[2, 3, 4]]], -1))
  assert attention_items.shape == (features.ITEM_ID.buckets, 4)


def test_signature_table_hashes_the_attention_item_table():
  model = model_helpers.randomized_model(small_config("eta"), seed=1)
  branch = model.long_branch
  table = branch.signature_table().numpy()
  projection = branch.simhash.projection.numpy()
  rows = np.random.default_rng(0).choice(features.ITEM_ID.buckets, 2000, replace=False)
  attention = model.feature_embeddings.attention_item_embedding.embeddings.numpy()[rows]
  representation = model.feature_embeddings.item_embedding.embeddings.numpy()
  np.testing.assert_array_equal(table[rows], numpy_simhash(attention, projection))
  assert representation.shape[1] != attention.shape[1]  # nothing else could be hashed
  with model.frozen_for_serving():
    np.testing.assert_array_equal(branch._table.numpy(), table)


# exact_topk uses seed 3: at seed 2 a duplicated behaviour ties at the k-th
# place, and the batch path's einsum and the shared path's matmul round the
# two equal dot products differently, so each keeps another copy (a
# property of ExactTopKBranch with or without decoupling).
@pytest.mark.parametrize("variant, overrides, seed", [
    ("eta", {}, 2),
    ("eta", {"use_item_ids": False, "retrieval_embedding": "item_category"}, 2),
    ("exact_topk", {}, 3),
    ("sam", {}, 2),
    ("sam", {"use_item_ids": False, "retrieval_embedding": "item_category"}, 2),
])
def test_rank_equals_the_batch_path(variant, overrides, seed):
  model = model_helpers.randomized_model(small_config(variant, **overrides), seed=seed)
  rank = frozen_rank(model)
  spread = []
  for length, seed in ((0, 1), (3, 2), (L, 3), (L + 5, 4)):
    inputs = rank_inputs(length, seed)
    want = direct_probabilities(model, inputs)
    got = rank(**{k: tf.constant(v, tf.int64) for k, v in inputs.items()})
    np.testing.assert_allclose(got[features.PROBABILITIES_KEY].numpy(), want, atol=1e-5)
    spread.append(want.std())
  assert max(spread) > 1e-2


def test_attention_tables_change_only_what_reads_them():
  """sam: the attention tables move the scorer, not the representation."""
  model = model_helpers.randomized_model(small_config("sam", top_k=5), seed=3)
  inputs = rank_inputs(L, 5)
  before = direct_probabilities(model, inputs)
  table = model.feature_embeddings.attention_category_embedding.embeddings
  table.assign(table.numpy()[::-1])
  assert np.abs(direct_probabilities(model, inputs) - before).max() > 1e-3
  # eta at k = L keeps every behaviour: the attention tables (retrieval
  # only) then change nothing.
  eta = model_helpers.randomized_model(small_config("eta", top_k=L), seed=4)
  before = direct_probabilities(eta, inputs)
  for table in eta.feature_embeddings.attention_tables():
    if not table.built:  # item retrieval never reads the category table
      continue
    table.embeddings.assign(table.embeddings.numpy()[::-1])
  np.testing.assert_allclose(direct_probabilities(eta, inputs), before, atol=1e-6)


def test_sam_trains_its_attention_tables():
  model = model_helpers.randomized_model(small_config("sam"), seed=5)
  inputs = transformed_examples(rank_inputs(L, 6))
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(model(inputs, training=True))
  grads = dict(zip([w.name for w in model.trainable_weights],
                   tape.gradient(loss, model.trainable_weights)))
  attention = [name for name in grads if "attention_" in name and "embedding" in name]
  assert len(attention) == 2
  assert all(grads[name] is not None for name in attention)


@pytest.mark.parametrize("overrides, message", [
    ({"model": "full_attention"}, "decoupled_attention needs"),
    ({"model": "din"}, "decoupled_attention needs"),
    ({"attention_embedding_dim": 0}, "attention_embedding_dim"),
    ({"decoupled_attention": 1}, "decoupled_attention must be a bool"),
])
def test_bad_settings_are_refused(overrides, message):
  with pytest.raises(config.ConfigError, match=message):
    small_config("eta", **overrides)
