"""SparseAttentiveMemory against a numpy implementation of the SAM equations.

The reference builds the scorer's input z_l = [t - e; t * e; m - e; m * e]
explicitly and runs the TF1-form GRU, pass by pass (../shared/docs/sam.md),
so it shares nothing with the layer's factorised scorer.
"""

import numpy as np
import pytest
import tensorflow as tf

from trainer.layers import sam


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def numpy_sam(layer, query, keys, values, mask):
  """The layer's weights, the paper's equations, float64; [B, T * (P + d)]."""
  w = {v.name.split("/")[-1].split(":")[0]: v.numpy().astype(np.float64)
       for v in layer.weights}
  length = keys.shape[1]
  t = query.astype(np.float64)
  e = keys.astype(np.float64)
  v = values.astype(np.float64)
  memory = t.copy()
  outputs = []
  for i in range(layer.num_passes):
    second = memory if layer.mode == "iter" else t
    weights = np.zeros(mask.shape)
    for b in range(t.shape[0]):
      for pos in range(length):
        z = np.concatenate([t[b] - e[b, pos], t[b] * e[b, pos],
                            second[b] - e[b, pos], second[b] * e[b, pos]])
        hidden = sigmoid(z @ w["scorer_hidden_kernel"][i] + w["scorer_hidden_bias"][i])
        score = hidden @ w["scorer_output_kernel"][i] + w["scorer_output_bias"][i]
        weights[b, pos] = sigmoid(score) if mask[b, pos] else 0.0
    read = np.einsum("bl,blv->bv", weights, v)
    gates = sigmoid(np.concatenate([read, memory], -1) @ w["gru_gate_kernel"]
                    + w["gru_gate_bias"])
    reset, update = np.split(gates, 2, axis=-1)
    candidate = np.tanh(np.concatenate([read, reset * memory], -1) @ w["gru_candidate_kernel"]
                        + w["gru_candidate_bias"])
    memory = update * memory + (1 - update) * candidate
    rows = w["position_kernel"][i][layer.sequence_length - length:]
    projected = np.maximum(weights @ rows + w["position_bias"][i], 0.0)
    outputs += [projected, memory]
  h = np.concatenate(outputs, -1)
  return ((h - w["moving_mean"]) / np.sqrt(w["moving_variance"] + layer.output_norm.epsilon)
          * w["gamma"] + w["beta"])


def case(seed, batch=4, length=12, dim=5, value_dim=7):
  rng = np.random.default_rng(seed)
  query = rng.standard_normal((batch, dim)).astype(np.float32)
  keys = rng.standard_normal((batch, length, dim)).astype(np.float32)
  values = rng.standard_normal((batch, length, value_dim)).astype(np.float32)
  lengths = np.array([0, 1, length // 2, length])[:batch]
  mask = np.arange(length)[None] >= length - lengths[:, None]
  return query, keys, values, mask


def built_layer(seed, mode, passes, length=12, dim=5, value_dim=7):
  tf.keras.utils.set_random_seed(seed)
  layer = sam.SparseAttentiveMemory(
      sequence_length=length, num_passes=passes, scorer_units=3, projection_units=4,
      mode=mode, value_dim=value_dim,
  )
  layer.build([None, dim])
  rng = np.random.default_rng(seed + 100)
  # Non-trivial BatchNorm statistics and biases, so every weight counts.
  for variable in layer.weights:
    variable.assign(rng.standard_normal(variable.shape).astype(np.float32)
                    * (0.5 if "variance" not in variable.name else 0.0)
                    + (1.5 if "variance" in variable.name else 0.0))
  return layer


@pytest.mark.parametrize("mode", sam.MODES)
@pytest.mark.parametrize("passes", [1, 2, 3])
def test_layer_matches_numpy_equations(mode, passes):
  query, keys, values, mask = case(passes)
  layer = built_layer(passes, mode, passes)
  got = layer(query, keys, values, mask, training=False).numpy()
  np.testing.assert_allclose(got, numpy_sam(layer, query, keys, values, mask),
                             rtol=1e-4, atol=1e-5)


def test_modes_differ_only_from_the_second_pass():
  query, keys, values, mask = case(0)
  one = [built_layer(0, mode, 1)(query, keys, values, mask).numpy() for mode in sam.MODES]
  np.testing.assert_array_equal(one[0], one[1])
  two = [built_layer(0, mode, 2)(query, keys, values, mask).numpy() for mode in sam.MODES]
  assert np.abs(two[0] - two[1]).max() > 1e-3


def test_padding_is_weighted_exactly_zero():
  query, keys, values, mask = case(1)
  layer = built_layer(1, "iter", 2)
  base = layer(query, keys, values, mask).numpy()
  # Anything at padded positions, even huge, changes nothing.
  noisy_keys = np.where(mask[..., None], keys, 1e6).astype(np.float32)
  noisy_values = np.where(mask[..., None], values, -1e6).astype(np.float32)
  np.testing.assert_array_equal(layer(query, noisy_keys, noisy_values, mask).numpy(), base)
  # The empty history (row 0) reads nothing: its projections are the biases.
  memory_only = numpy_sam(layer, query[:1], keys[:1], values[:1], mask[:1])
  np.testing.assert_allclose(base[:1], memory_only, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", sam.MODES)
def test_shared_path_and_a_left_padded_tail_equal_the_batch_path(mode):
  query, keys, values, mask = case(2, batch=4)
  layer = built_layer(2, mode, 2)
  history = 3  # row 3 holds the whole history; share it with 4 candidates.
  shared_keys = np.broadcast_to(keys[history], keys.shape)
  shared_values = np.broadcast_to(values[history], values.shape)
  shared_mask = np.broadcast_to(mask[history], mask.shape)
  batch = layer(query, shared_keys, shared_values, shared_mask).numpy()
  np.testing.assert_allclose(
      layer.shared(query, keys[history], values[history], mask[history]).numpy(),
      batch, rtol=1e-5, atol=1e-6)
  row = 2  # half real: its last 6 positions equal the whole padded row.
  tail = slice(6, None)
  np.testing.assert_allclose(
      layer.shared(query, keys[row, tail], values[row, tail], mask[row, tail]).numpy(),
      layer(query, np.broadcast_to(keys[row], keys.shape),
            np.broadcast_to(values[row], values.shape),
            np.broadcast_to(mask[row], mask.shape)).numpy(),
      rtol=1e-5, atol=1e-6)


def test_gradients_reach_every_weight():
  query, keys, values, mask = case(3)
  layer = built_layer(3, "iter", 2)
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(tf.square(layer(query, keys, values, mask, training=True)[:, :-1]))
  grads = tape.gradient(loss, layer.trainable_weights)
  assert all(g is not None and np.abs(g.numpy()).max() > 0 for g in grads)


@pytest.mark.parametrize("kwargs, message", [
    (dict(sequence_length=0), "sequence_length"),
    (dict(sequence_length=8, num_passes=0), "num_passes"),
    (dict(sequence_length=8, num_passes=True), "num_passes"),
    (dict(sequence_length=8, scorer_units=2.0), "scorer_units"),
    (dict(sequence_length=8, projection_units=-1), "projection_units"),
    (dict(sequence_length=8, mode="stack"), "mode"),
    (dict(sequence_length=8, value_dim=0), "value_dim"),
])
def test_bad_arguments_are_refused(kwargs, message):
  with pytest.raises(ValueError, match=message):
    sam.SparseAttentiveMemory(**kwargs)


def test_bad_inputs_are_refused():
  layer = sam.SparseAttentiveMemory(sequence_length=4, value_dim=3)
  query = tf.ones([2, 5])
  with pytest.raises(ValueError, match="exceeds sequence_length"):
    layer(query, tf.ones([2, 6, 5]), tf.ones([2, 6, 3]), tf.ones([2, 6], tf.bool))
  with pytest.raises(ValueError, match="keys width"):
    layer(query, tf.ones([2, 4, 4]), tf.ones([2, 4, 3]), tf.ones([2, 4], tf.bool))
  with pytest.raises(ValueError, match="values width"):
    layer(query, tf.ones([2, 4, 5]), tf.ones([2, 4, 2]), tf.ones([2, 4], tf.bool))
  with pytest.raises(ValueError, match="bool"):
    layer(query, tf.ones([2, 4, 5]), tf.ones([2, 4, 3]), tf.ones([2, 4]))


def test_config_round_trip():
  layer = sam.SparseAttentiveMemory(sequence_length=9, num_passes=3, scorer_units=5,
                                    projection_units=2, mode="stk", value_dim=6, name="m")
  restored = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
  assert isinstance(restored, sam.SparseAttentiveMemory)
  assert restored.get_config() == layer.get_config()
  assert restored.get_config()["mode"] == "stk"


def test_saved_model_round_trip(tmp_path):
  query, keys, values, mask = case(4)
  layer = built_layer(4, "iter", 2)
  inputs = [tf.keras.Input([5]), tf.keras.Input([12, 5]), tf.keras.Input([12, 7]),
            tf.keras.Input([12], dtype=tf.bool)]
  model = tf.keras.Model(inputs, layer(*inputs))
  expected = model([query, keys, values, mask]).numpy()
  model.save(str(tmp_path / "sam"))
  loaded = tf.keras.models.load_model(str(tmp_path / "sam"))
  np.testing.assert_allclose(loaded([query, keys, values, mask]).numpy(), expected,
                             rtol=1e-6, atol=1e-6)
  restored_layer = [l for l in loaded.layers if isinstance(l, sam.SparseAttentiveMemory)]
  assert restored_layer and restored_layer[0].get_config()["num_passes"] == 2
