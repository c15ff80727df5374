"""HammingTopK against a brute-force sort in pure Python."""

import numpy as np
import pytest
import tensorflow as tf

from trainer.layers import retrieval


def brute_force_top_k(query, keys, mask, k, prefer_recent):
  """Sorts positions by (Hamming distance, tie rank), padding last.

  Distances by Python's int.bit_count over the 64-bit two's complement; no
  TensorFlow. Returns (indices [B, k], valid [B, k]).
  """
  indices, valid = [], []
  for q_row, key_rows, mask_row in zip(query, keys, mask):
    entries = []
    for position, (key, is_real) in enumerate(zip(key_rows, mask_row)):
      distance = sum(
          bin((int(a) ^ int(b)) & (2**64 - 1)).count("1")
          for a, b in zip(q_row, key)
      )
      tie = -position if prefer_recent else position
      # Padding after every real behaviour, in the same tie order.
      entries.append((0, distance, tie) if is_real else (1, 0, tie))
    order = sorted(range(len(entries)), key=lambda i: entries[i])[:k]
    indices.append(order)
    valid.append([bool(mask_row[i]) for i in order])
  return np.array(indices, np.int32), np.array(valid, bool)


def random_case(seed, batch=6, length=40, words=1, bits_used=6):
  """Signatures using only a few low bits, so distance ties are frequent."""
  rng = np.random.default_rng(seed)
  high = 2**bits_used
  query = rng.integers(0, high, (batch, words), dtype=np.int64)
  keys = rng.integers(0, high, (batch, length, words), dtype=np.int64)
  # Some negative words (sign bit set) too.
  keys[:, ::7] = ~keys[:, ::7]
  mask = np.ones((batch, length), bool)
  mask[0, :] = False                      # no history at all
  mask[1, : length - 3] = False           # 3 behaviours, left-padded
  mask[2] = rng.random(length) < 0.5      # holes anywhere
  mask[3, : length // 2] = False
  return query, keys, mask


@pytest.mark.parametrize("prefer_recent", [False, True])
@pytest.mark.parametrize("words", [1, 2])
@pytest.mark.parametrize("k", [1, 5, 16, 40])
def test_indices_equal_brute_force_sort(k, words, prefer_recent):
  query, keys, mask = random_case(seed=k * 10 + words, words=words)
  layer = retrieval.HammingTopK(k=k, prefer_recent=prefer_recent)
  indices, valid = layer(tf.constant(query), tf.constant(keys),
                         tf.constant(mask))
  expected_indices, expected_valid = brute_force_top_k(
      query, keys, mask, k, prefer_recent
  )
  assert indices.dtype == tf.int32 and valid.dtype == tf.bool
  np.testing.assert_array_equal(indices.numpy(), expected_indices)
  np.testing.assert_array_equal(valid.numpy(), expected_valid)


def test_padding_never_retrieved_and_short_histories_flag_empty_slots():
  query, keys, mask = random_case(seed=3, length=64)
  # Padding signatures equal to the query: distance 0, still never chosen.
  keys[~mask] = query[np.nonzero(~mask)[0]]
  k = 8
  indices, valid = retrieval.HammingTopK(k=k)(
      tf.constant(query), tf.constant(keys), tf.constant(mask)
  )
  indices, valid = indices.numpy(), valid.numpy()
  for row in range(len(mask)):
    real = int(mask[row].sum())
    np.testing.assert_array_equal(valid[row], np.arange(k) < min(real, k))
    assert mask[row, indices[row, : min(real, k)]].all()
    assert len(set(indices[row].tolist())) == k  # no position twice


def test_hand_counted_example_with_ties():
  # Query 0; keys at distances [2, 1, 2, 0 (padding), 1, 2].
  query = np.array([[0]], np.int64)
  keys = np.array([[[3], [4], [5], [0], [8], [6]]], np.int64)
  mask = np.array([[True, True, True, False, True, True]])
  older_first = retrieval.HammingTopK(k=6)(query, keys, mask)
  assert older_first[0].numpy().tolist() == [[1, 4, 0, 2, 5, 3]]
  assert older_first[1].numpy().tolist() == [[True] * 5 + [False]]
  recent_first = retrieval.HammingTopK(k=4, prefer_recent=True)(
      query, keys, mask
  )
  assert recent_first[0].numpy().tolist() == [[4, 1, 5, 2]]


def test_xla_equals_eager_at_long_history():
  query, keys, mask = random_case(seed=5, batch=4, length=2000, words=2,
                                  bits_used=20)
  layer = retrieval.HammingTopK(k=64)
  args = (tf.constant(query), tf.constant(keys), tf.constant(mask))
  eager = layer(*args)
  jitted = tf.function(layer, jit_compile=True)(*args)
  for a, b in zip(eager, jitted):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  expected, _ = brute_force_top_k(query[:2], keys[:2], mask[:2], 64, False)
  np.testing.assert_array_equal(eager[0].numpy()[:2], expected)


def _wrapped_model(length=30, words=1, k=7):
  query = tf.keras.Input([words], dtype=tf.int64, name="query")
  keys = tf.keras.Input([length, words], dtype=tf.int64, name="keys")
  mask = tf.keras.Input([length], dtype=tf.bool, name="mask")
  indices, valid = retrieval.HammingTopK(k=k, prefer_recent=True, name="top")(
      query, keys, mask
  )
  return tf.keras.Model([query, keys, mask], [indices, valid])


def test_savedmodel_round_trip(tmp_path):
  query, keys, mask = random_case(seed=8, length=30)
  model = _wrapped_model()
  expected = [t.numpy() for t in model([query, keys, mask])]
  path = str(tmp_path / "topk_model")
  model.save(path)
  reloaded = tf.keras.models.load_model(path)
  assert reloaded.get_layer("top").prefer_recent
  for got, want in zip(reloaded([query, keys, mask]), expected):
    np.testing.assert_array_equal(got.numpy(), want)
  served = tf.saved_model.load(path).signatures["serving_default"](
      query=tf.constant(query), keys=tf.constant(keys), mask=tf.constant(mask)
  )
  got = sorted(served.values(), key=lambda t: t.dtype.name)  # bool, int32
  np.testing.assert_array_equal(got[0].numpy(), expected[1])
  np.testing.assert_array_equal(got[1].numpy(), expected[0])


def test_config_round_trip():
  layer = retrieval.HammingTopK(k=9, prefer_recent=True)
  clone = retrieval.HammingTopK.from_config(layer.get_config())
  assert (clone.k, clone.prefer_recent) == (9, True)
  query, keys, mask = random_case(seed=9)
  for a, b in zip(layer(query, keys, mask), clone(query, keys, mask)):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k": 0}, "k must be >= 1"),
        ({"k": 2.0}, "k must be an int"),
        ({"k": True}, "k must be an int"),
        ({"k": 4, "prefer_recent": "yes"}, "prefer_recent must be a bool"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
  with pytest.raises(ValueError, match=message):
    retrieval.HammingTopK(**kwargs)


def test_bad_inputs_raise():
  query, keys, mask = random_case(seed=1, length=10)
  with pytest.raises(ValueError, match="k=11 is larger than the history"):
    retrieval.HammingTopK(k=11)(query, keys, mask)
  with pytest.raises(ValueError, match="k=11 is larger than the history"):
    _wrapped_model(length=10, k=11)
  with pytest.raises(ValueError, match="mask must be bool"):
    retrieval.HammingTopK(k=2)(query, keys, mask.astype(np.int32))
  with pytest.raises(ValueError, match="same static word count"):
    retrieval.HammingTopK(k=2)(np.zeros([6, 2], np.int64), keys, mask)
  with pytest.raises(ValueError, match="expects query_signatures"):
    retrieval.HammingTopK(k=2)(query, keys[:, :, 0], mask)
  with pytest.raises(ValueError, match="exact float32 score range"):
    retrieval.HammingTopK(k=2)(
        np.zeros([1, 2], np.int64), np.zeros([1, 130000, 2], np.int64),
        np.ones([1, 130000], bool),
    )
