"""SDIM aggregation against a numpy hash-bucket implementation of the paper."""

import collections
import math

import numpy as np
import pytest
import tensorflow as tf

from trainer.layers import sdim

_U32 = 2.0**-24


def numpy_sdim(query, keys, mask, projection, tau):
  """The paper's aggregation with explicit hash tables.

  For each row and each signature g (bits g*tau .. g*tau+tau-1 of sign(x R)):
  put every real behaviour in a dict keyed by its signature code, sum the
  bucket of the query's code, l2-normalise it (an empty bucket is zero), and
  average over the m / tau signatures.
  """
  num_bits = projection.shape[1]
  groups = num_bits // tau
  out = np.zeros(query.shape, np.float64)
  for b in range(query.shape[0]):
    q_bits = query[b].astype(np.float64) @ projection > 0
    k_bits = keys[b].astype(np.float64) @ projection > 0
    for g in range(groups):
      cols = slice(g * tau, (g + 1) * tau)
      buckets = collections.defaultdict(lambda: np.zeros(query.shape[1]))
      for pos in np.nonzero(mask[b])[0]:
        buckets[tuple(k_bits[pos, cols])] += keys[b, pos]
      total = buckets.get(tuple(q_bits[cols]), np.zeros(query.shape[1]))
      norm = np.linalg.norm(total)
      out[b] += total / norm if norm > 0 else total
    out[b] /= groups
  return out


def assert_no_undecidable_bits(x, projection):
  """No projection so close to 0 that float32 rounding could flip its sign."""
  x64 = x.reshape(-1, x.shape[-1]).astype(np.float64)
  d = x.shape[-1]
  gamma = d * _U32 / (1 - d * _U32)
  r = projection.astype(np.float64)
  assert np.all(np.abs(x64 @ r) > 2 * gamma * (np.abs(x64) @ np.abs(r)))


def small_case(seed=0, batch=6, length=40, dim=8):
  """Keys clustered around the query so that buckets actually collide."""
  rng = np.random.default_rng(seed)
  query = rng.standard_normal((batch, dim)).astype(np.float32)
  noise = rng.standard_normal((batch, length, dim))
  closeness = rng.random((batch, length, 1))
  keys = (closeness * query[:, None] + (1 - closeness) * noise).astype(
      np.float32
  )
  mask = rng.random((batch, length)) < 0.7
  mask[0] = False
  mask[1] = True
  return query, keys, mask


@pytest.mark.parametrize("num_bits, tau", [(48, 3), (16, 1), (64, 4),
                                           (128, 8)])
def test_equals_numpy_hash_table_reference(num_bits, tau):
  query, keys, mask = small_case(seed=num_bits + tau)
  layer = sdim.SdimAggregation(num_bits=num_bits, tau=tau, seed=3)
  got = layer(query, keys, mask).numpy()
  projection = layer.simhash.projection.numpy()
  assert_no_undecidable_bits(np.concatenate([query[:, None], keys], 1),
                             projection)
  expected = numpy_sdim(query, keys, mask, projection, tau)
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(got[0], 0.0)
  # Non-trivial: some buckets matched, and not every behaviour everywhere.
  assert np.abs(got[1:]).sum() > 0


def test_padding_excluded_even_in_the_query_bucket():
  query, keys, mask = small_case(seed=2)
  layer = sdim.SdimAggregation(num_bits=48, tau=3, seed=1)
  before = layer(query, keys, mask).numpy()
  # Padding set to the query itself: same bucket everywhere, still ignored.
  keys[~mask] = np.broadcast_to(query[:, None], keys.shape)[~mask] * 5
  np.testing.assert_allclose(layer(query, keys, mask).numpy(), before,
                             rtol=1e-6, atol=1e-7)


def test_identical_keys_give_the_normalised_query():
  """Every key equal to the query: every bucket holds them all; the l2
  normalisation makes the output q / |q| whatever the count."""
  rng = np.random.default_rng(4)
  query = rng.standard_normal((3, 8)).astype(np.float32)
  for length in (1, 5, 30):
    keys = np.repeat(query[:, None], length, axis=1)
    out = sdim.SdimAggregation(seed=2)(query, keys,
                                       np.ones((3, length), bool)).numpy()
    np.testing.assert_allclose(
        out, query / np.linalg.norm(query, axis=1, keepdims=True), rtol=1e-5
    )


def test_n_candidates_sharing_a_history_equal_one_at_a_time():
  query, keys, mask = small_case()
  layer = sdim.SdimAggregation(num_bits=48, tau=3, seed=4)
  shared = layer(np.stack([query, query[::-1]], axis=1), keys, mask).numpy()
  np.testing.assert_allclose(shared[:, 0], layer(query, keys, mask).numpy(), atol=1e-6)
  np.testing.assert_allclose(shared[:, 1], layer(query[::-1], keys, mask).numpy(), atol=1e-6)


def test_precomputed_signatures_give_the_same_output():
  query, keys, mask = small_case(seed=5)
  layer = sdim.SdimAggregation(num_bits=48, tau=3, seed=6)
  expected = layer(query, keys, mask).numpy()
  q_sig = layer.simhash(query)
  k_sig = tf.gather(layer.simhash(keys.reshape(-1, 8)),
                    np.arange(keys.shape[0] * keys.shape[1]).reshape(6, 40))
  got = layer(query, keys, mask, query_signatures=q_sig,
              key_signatures=k_sig).numpy()
  np.testing.assert_array_equal(got, expected)


def test_gradients_reach_keys_but_not_the_projection():
  query, keys, mask = small_case(seed=7)
  layer = sdim.SdimAggregation(num_bits=48, tau=3, seed=6)
  keys_tensor = tf.constant(keys)
  with tf.GradientTape() as tape:
    tape.watch(keys_tensor)
    loss = tf.reduce_sum(layer(query, keys_tensor, mask) ** 2)
  grad = tape.gradient(loss, keys_tensor).numpy()
  assert layer.trainable_weights == []
  assert np.all(np.isfinite(grad)) and np.abs(grad[1:]).sum() > 0
  np.testing.assert_array_equal(grad[~mask], 0.0)


def test_xla_equals_eager():
  query, keys, mask = small_case(seed=8, batch=16, length=256, dim=32)
  layer = sdim.SdimAggregation(num_bits=48, tau=3, seed=9)
  eager = layer(query, keys, mask).numpy()
  jitted = tf.function(layer, jit_compile=True)(query, keys, mask).numpy()
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)


def test_config_round_trip():
  query, keys, mask = small_case(seed=10)
  layer = sdim.SdimAggregation(num_bits=64, tau=4, seed=12)
  expected = layer(query, keys, mask).numpy()
  config = layer.get_config()
  assert (config["num_bits"], config["tau"], config["seed"]) == (64, 4, 12)
  clone = sdim.SdimAggregation.from_config(config)
  np.testing.assert_array_equal(clone(query, keys, mask).numpy(), expected)


def test_savedmodel_round_trip(tmp_path):
  query, keys, mask = small_case(seed=11)
  q_in = tf.keras.Input([8], name="query")
  k_in = tf.keras.Input([40, 8], name="keys")
  m_in = tf.keras.Input([40], dtype=tf.bool, name="mask")
  out = sdim.SdimAggregation(num_bits=48, tau=3, seed=13, name="sdim")(
      q_in, k_in, m_in
  )
  model = tf.keras.Model([q_in, k_in, m_in], out)
  expected = model([query, keys, mask]).numpy()
  path = str(tmp_path / "sdim_model")
  model.save(path)
  reloaded = tf.keras.models.load_model(path)
  np.testing.assert_array_equal(reloaded([query, keys, mask]).numpy(),
                                expected)
  np.testing.assert_array_equal(
      reloaded.get_layer("sdim").simhash.projection.numpy(),
      model.get_layer("sdim").simhash.projection.numpy(),
  )
  served = tf.saved_model.load(path).signatures["serving_default"](
      query=tf.constant(query), keys=tf.constant(keys), mask=tf.constant(mask)
  )
  np.testing.assert_array_equal(list(served.values())[0].numpy(), expected)


def test_collision_rate_per_signature_matches_theory():
  """A key at angle theta shares a tau-bit signature with probability
  (1 - theta/pi) ** tau. Over 4000 uniformly rotated pairs and 16 signatures
  the mean rate is within 5 binomial standard errors (the mean of correlated
  indicators has at most the variance of one)."""
  n, d, theta, tau = 4000, 32, math.pi / 4, 3
  rng = np.random.default_rng(14)
  x = rng.standard_normal((n, d))
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  u = rng.standard_normal((n, d))
  u -= (u * x).sum(1, keepdims=True) * x
  u /= np.linalg.norm(u, axis=1, keepdims=True)
  y = math.cos(theta) * x + math.sin(theta) * u
  layer = sdim.SdimAggregation(num_bits=48, tau=tau, seed=15)
  layer.build([None, d])
  qx = layer.signature_codes(layer.simhash(x.astype(np.float32))).numpy()
  qy = layer.signature_codes(layer.simhash(y.astype(np.float32))).numpy()
  same = qx == qy
  p = (1 - theta / math.pi) ** tau
  assert abs(same.mean() - p) < 5 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_bits": 50}, "num_bits must be one of"),
        ({"tau": 5}, "tau must be >= 1 and divide num_bits=48"),
        ({"tau": 0}, "tau must be >= 1"),
        ({"tau": 3.0}, "tau must be an int"),
        ({"seed": -3}, "seed must be in"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
  with pytest.raises(ValueError, match=message):
    sdim.SdimAggregation(**kwargs)


def test_bad_inputs_raise():
  query, keys, mask = small_case()
  layer = sdim.SdimAggregation()
  with pytest.raises(ValueError, match="same width D"):
    layer(query, keys[:, :, :4], mask)
  with pytest.raises(ValueError, match="mask must be bool"):
    layer(query, keys, mask.astype(np.float32))
  with pytest.raises(ValueError, match="query must be"):
    sdim.SdimAggregation()(keys[:, tf.newaxis], keys, mask)
