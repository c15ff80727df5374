"""DIN attention against a numpy per-behaviour reference."""

import numpy as np
import pytest
import tensorflow as tf

from trainer.layers import din_attention

NP_ACTIVATIONS = {
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "relu": lambda x: np.maximum(x, 0.0),
}


def numpy_din(query, keys, mask, weights, activation):
  """For each real behaviour: MLP([q, k, q-k, q*k]) -> score; sum score * k.

  weights: get_weights() order: (kernel, bias) per hidden layer, then the
  scorer's (kernel, bias).
  """
  act = NP_ACTIVATIONS[activation]
  layers = [(weights[i].astype(np.float64), weights[i + 1].astype(np.float64))
            for i in range(0, len(weights), 2)]
  out = np.zeros(query.shape, np.float64)
  for b in range(query.shape[0]):
    q = query[b].astype(np.float64)
    for pos in range(keys.shape[1]):
      if not mask[b, pos]:
        continue
      k = keys[b, pos].astype(np.float64)
      h = np.concatenate([q, k, q - k, q * k])
      for kernel, bias in layers[:-1]:
        h = act(h @ kernel + bias)
      score = (h @ layers[-1][0] + layers[-1][1])[0]
      out[b] += score * k
  return out


def small_case(seed=0, batch=5, length=12, dim=6):
  rng = np.random.default_rng(seed)
  query = rng.standard_normal((batch, dim)).astype(np.float32)
  keys = rng.standard_normal((batch, length, dim)).astype(np.float32)
  mask = rng.random((batch, length)) < 0.6
  mask[0] = False
  mask[1] = True
  return query, keys, mask


def _randomise_biases(layer, seed):
  rng = np.random.default_rng(seed)
  layer.set_weights([
      w if w.ndim == 2 else rng.standard_normal(w.shape).astype(np.float32)
      for w in layer.get_weights()
  ])


@pytest.mark.parametrize("hidden_units, activation",
                         [((8, 4), "sigmoid"), ((5,), "relu"), ((), "relu")])
def test_equals_numpy_reference(hidden_units, activation):
  query, keys, mask = small_case()
  layer = din_attention.DinAttention(hidden_units=hidden_units,
                                     activation=activation)
  layer(query, keys, mask)
  _randomise_biases(layer, 1)
  got = layer(query, keys, mask).numpy()
  expected = numpy_din(query, keys, mask, layer.get_weights(), activation)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(got[0], 0.0)


def test_shared_history_equals_one_candidate_at_a_time():
  """`shared` (N candidates, one history; first layer applied in parts)
  equals `call` on each candidate with that history, and the numpy reference."""
  query, keys, mask = small_case(seed=6)
  layer = din_attention.DinAttention(hidden_units=(8, 4))
  layer(query, keys, mask)
  _randomise_biases(layer, 6)
  shared = layer.shared(query, keys[1], mask[1]).numpy()
  assert shared.shape == query.shape
  one_at_a_time = layer(query, np.broadcast_to(keys[1], keys.shape),
                        np.broadcast_to(mask[1], mask.shape)).numpy()
  np.testing.assert_allclose(shared, one_at_a_time, rtol=1e-5, atol=1e-5)
  want = numpy_din(query, np.broadcast_to(keys[1], keys.shape),
                   np.broadcast_to(mask[1], mask.shape), layer.get_weights(), "sigmoid")
  np.testing.assert_allclose(shared, want, rtol=1e-4, atol=1e-5)


def test_no_softmax_scores_add_up():
  """With a constant scorer (zero kernels, bias 1) the output is the SUM of
  the real keys, not their mean: DIN keeps the intensity of interest."""
  query, keys, mask = small_case(seed=2)
  layer = din_attention.DinAttention(hidden_units=(3,))
  layer(query, keys, mask)
  layer.set_weights([np.zeros_like(w) for w in layer.get_weights()[:-1]]
                    + [np.ones(1, np.float32)])
  expected = (keys * mask[:, :, None]).sum(axis=1)
  np.testing.assert_allclose(layer(query, keys, mask).numpy(), expected,
                             rtol=1e-5, atol=1e-5)


def test_xla_equals_eager():
  query, keys, mask = small_case(seed=3, batch=16, length=50, dim=32)
  layer = din_attention.DinAttention(hidden_units=(80, 40))
  eager = layer(query, keys, mask).numpy()
  jitted = tf.function(layer, jit_compile=True)(query, keys, mask).numpy()
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)


def test_config_round_trip_with_same_weights():
  query, keys, mask = small_case(seed=4)
  layer = din_attention.DinAttention(hidden_units=[7, 3], activation="relu")
  expected = layer(query, keys, mask).numpy()
  config = layer.get_config()
  assert config["hidden_units"] == [7, 3] and config["activation"] == "relu"
  clone = din_attention.DinAttention.from_config(config)
  clone(query, keys, mask)
  clone.set_weights(layer.get_weights())
  np.testing.assert_array_equal(clone(query, keys, mask).numpy(), expected)


def test_savedmodel_round_trip(tmp_path):
  query, keys, mask = small_case(seed=5)
  q_in = tf.keras.Input([6], name="query")
  k_in = tf.keras.Input([12, 6], name="keys")
  m_in = tf.keras.Input([12], dtype=tf.bool, name="mask")
  out = din_attention.DinAttention(hidden_units=(8, 4), name="din")(
      q_in, k_in, m_in
  )
  model = tf.keras.Model([q_in, k_in, m_in], out)
  expected = model([query, keys, mask]).numpy()
  path = str(tmp_path / "din_model")
  model.save(path)
  reloaded = tf.keras.models.load_model(path)
  np.testing.assert_array_equal(reloaded([query, keys, mask]).numpy(),
                                expected)
  served = tf.saved_model.load(path).signatures["serving_default"](
      query=tf.constant(query), keys=tf.constant(keys), mask=tf.constant(mask)
  )
  np.testing.assert_array_equal(list(served.values())[0].numpy(), expected)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden_units": "80"}, "hidden_units must be a sequence"),
        ({"hidden_units": 80}, "hidden_units must be a sequence"),
        ({"hidden_units": [80, 0]}, "hidden_units must be positive ints"),
        ({"hidden_units": [8.0]}, "hidden_units must be positive ints"),
        ({"activation": "nope"}, "unknown activation"),
        ({"activation": None}, "activation must be a name"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
  with pytest.raises(ValueError, match=message):
    din_attention.DinAttention(**kwargs)


def test_bad_inputs_raise():
  query, keys, mask = small_case()
  layer = din_attention.DinAttention(hidden_units=(4,))
  with pytest.raises(ValueError, match="same width D"):
    layer(query, keys[:, :, :5], mask)
  with pytest.raises(ValueError, match="mask must be bool"):
    layer(query, keys, mask.astype(np.int64))
  with pytest.raises(ValueError, match="query must be"):
    din_attention.DinAttention(hidden_units=(4,))(keys, keys, mask)
