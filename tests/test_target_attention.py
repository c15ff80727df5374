"""Multi-head target attention against a numpy loop-over-heads reference."""

import math

import numpy as np
import pytest
import tensorflow as tf

from trainer.layers import target_attention as ta


def numpy_target_attention(query, keys, mask, weights, num_heads, head_dim,
                           output_dim):
  """Per example, per head: softmax over real positions, then concat heads.

  weights: the layer's get_weights() in order query (W, b), key (W, b),
  value (W, b)[, output W].
  """
  wq, bq, wk, bk, wv, bv = [w.astype(np.float64) for w in weights[:6]]
  outputs = []
  for b in range(query.shape[0]):
    q = query[b] @ wq + bq
    k = keys[b] @ wk + bk
    v = keys[b] @ wv + bv
    heads = []
    for h in range(num_heads):
      cols = slice(h * head_dim, (h + 1) * head_dim)
      real = np.nonzero(mask[b])[0]
      head = np.zeros(head_dim)
      if len(real):
        logits = np.array([q[cols] @ k[i, cols] for i in real])
        logits /= math.sqrt(head_dim)
        p = np.exp(logits - logits.max())
        p /= p.sum()
        head = sum(p_i * v[i, cols] for p_i, i in zip(p, real))
      heads.append(head)
    outputs.append(np.concatenate(heads))
  outputs = np.array(outputs)
  if output_dim is not None:
    outputs = outputs @ weights[6].astype(np.float64)
  return outputs


def small_case(seed=0, batch=5, length=9, dq=6, dk=10):
  rng = np.random.default_rng(seed)
  query = rng.standard_normal((batch, dq)).astype(np.float32)
  keys = rng.standard_normal((batch, length, dk)).astype(np.float32)
  mask = rng.random((batch, length)) < 0.6
  mask[0] = False          # no history
  mask[1] = True           # full history
  mask[2, :-1] = False     # one behaviour
  return query, keys, mask


def _randomise_biases(layer, seed):
  """Biases start at zero; make them count in the comparison."""
  rng = np.random.default_rng(seed)
  layer.set_weights([
      w if w.ndim == 2 else rng.standard_normal(w.shape).astype(np.float32)
      for w in layer.get_weights()
  ])


@pytest.mark.parametrize("num_heads, head_dim, output_dim",
                         [(1, 4, None), (2, 3, None), (3, 4, 5)])
def test_equals_numpy_reference(num_heads, head_dim, output_dim):
  query, keys, mask = small_case()
  layer = ta.MultiHeadTargetAttention(
      num_heads=num_heads, head_dim=head_dim, output_dim=output_dim
  )
  layer(query, keys, mask)
  _randomise_biases(layer, 1)
  got = layer(query, keys, mask).numpy()
  expected = numpy_target_attention(
      query, keys, mask, layer.get_weights(), num_heads, head_dim, output_dim
  )
  assert got.shape == (5, output_dim or num_heads * head_dim)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_all_masked_row_gives_zeros_and_finite_gradients():
  query, keys, mask = small_case()
  layer = ta.MultiHeadTargetAttention(num_heads=2, head_dim=4, output_dim=3)
  layer(query, keys, mask)
  _randomise_biases(layer, 2)
  with tf.GradientTape() as tape:
    keys_tensor = tf.constant(keys)
    tape.watch(keys_tensor)
    out = layer(query, keys_tensor, mask)
    loss = tf.reduce_sum(out)
  np.testing.assert_array_equal(out.numpy()[0], np.zeros(3))
  grads = tape.gradient(loss, [keys_tensor] + layer.trainable_weights)
  for grad in grads:
    assert np.all(np.isfinite(tf.convert_to_tensor(grad).numpy()))
  # Padded keys get no gradient: they never influence the output.
  np.testing.assert_array_equal(grads[0].numpy()[~mask], 0.0)


def test_padding_values_do_not_change_the_output():
  query, keys, mask = small_case(seed=3)
  layer = ta.MultiHeadTargetAttention(num_heads=2, head_dim=4)
  before = layer(query, keys, mask).numpy()
  keys[~mask] = 1e4
  np.testing.assert_allclose(layer(query, keys, mask).numpy(), before,
                             rtol=1e-6, atol=1e-6)


def test_shared_history_for_n_candidates_equals_one_at_a_time():
  query, keys, mask = small_case(seed=4)
  rng = np.random.default_rng(4)
  candidates = rng.standard_normal((5, 7, 6)).astype(np.float32)
  layer = ta.MultiHeadTargetAttention(num_heads=2, head_dim=4, output_dim=3)
  shared = layer(candidates, keys, mask).numpy()
  assert shared.shape == (5, 7, 3)
  for n in range(7):
    np.testing.assert_allclose(
        shared[:, n], layer(candidates[:, n], keys, mask).numpy(),
        rtol=1e-5, atol=1e-6,
    )


def test_gathered_keys_equal_attention_over_the_gathered_rows():
  """`gathered` (serving: distinct keys projected once) equals `call` on the
  keys each query would see."""
  rng = np.random.default_rng(5)
  table = rng.standard_normal((9, 6)).astype(np.float32)
  query = rng.standard_normal((4, 5)).astype(np.float32)
  slots = rng.integers(0, 9, (4, 3)).astype(np.int32)
  valid = rng.random((4, 3)) < 0.7
  valid[0] = False
  layer = ta.MultiHeadTargetAttention(num_heads=2, head_dim=4, output_dim=3)
  want = layer(query, table[slots], valid).numpy()
  np.testing.assert_allclose(
      layer.gathered(query, table, slots, valid).numpy(), want, rtol=1e-5, atol=1e-6
  )
  np.testing.assert_array_equal(want[0], 0.0)


def test_plain_function_equals_numpy_on_given_heads():
  rng = np.random.default_rng(5)
  q = rng.standard_normal((3, 2, 4)).astype(np.float32)
  k = rng.standard_normal((3, 6, 2, 4)).astype(np.float32)
  v = rng.standard_normal((3, 6, 2, 5)).astype(np.float32)
  mask = rng.random((3, 6)) < 0.5
  mask[0] = False
  mask[1, 0] = True
  got = ta.target_attention(q, k, v, mask).numpy()
  assert got.shape == (3, 2, 5)
  for b in range(3):
    for h in range(2):
      real = np.nonzero(mask[b])[0]
      if not len(real):
        np.testing.assert_array_equal(got[b, h], 0.0)
        continue
      logits = k[b, real, h] @ q[b, h] / 2.0
      p = np.exp(logits - logits.max())
      p /= p.sum()
      np.testing.assert_allclose(got[b, h], p @ v[b, real, h], rtol=1e-5,
                                 atol=1e-6)


def test_dropout_only_in_training():
  query, keys, mask = small_case(seed=6)
  layer = ta.MultiHeadTargetAttention(num_heads=2, head_dim=4, dropout=0.5)
  inference = layer(query, keys, mask, training=False).numpy()
  np.testing.assert_array_equal(layer(query, keys, mask).numpy(), inference)
  trained = layer(query, keys, mask, training=True).numpy()
  assert not np.allclose(trained[1:], inference[1:])


def test_xla_equals_eager():
  query, keys, mask = small_case(seed=7, batch=8, length=64, dq=16, dk=24)
  layer = ta.MultiHeadTargetAttention(num_heads=4, head_dim=8, output_dim=12)
  eager = layer(query, keys, mask).numpy()
  jitted = tf.function(layer, jit_compile=True)(query, keys, mask).numpy()
  np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-6)


def test_config_round_trip_with_same_weights():
  query, keys, mask = small_case(seed=8)
  layer = ta.MultiHeadTargetAttention(num_heads=3, head_dim=2, output_dim=4,
                                      dropout=0.25)
  expected = layer(query, keys, mask).numpy()
  config = layer.get_config()
  assert (config["num_heads"], config["head_dim"], config["output_dim"],
          config["dropout"]) == (3, 2, 4, 0.25)
  clone = ta.MultiHeadTargetAttention.from_config(config)
  clone(query, keys, mask)
  clone.set_weights(layer.get_weights())
  np.testing.assert_array_equal(clone(query, keys, mask).numpy(), expected)


def test_savedmodel_round_trip(tmp_path):
  query, keys, mask = small_case(seed=9)
  q_in = tf.keras.Input([6], name="query")
  k_in = tf.keras.Input([9, 10], name="keys")
  m_in = tf.keras.Input([9], dtype=tf.bool, name="mask")
  out = ta.MultiHeadTargetAttention(num_heads=2, head_dim=4, output_dim=3,
                                    name="attention")(q_in, k_in, m_in)
  model = tf.keras.Model([q_in, k_in, m_in], out)
  expected = model([query, keys, mask]).numpy()
  path = str(tmp_path / "attention_model")
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
        ({"num_heads": 0}, "num_heads must be >= 1"),
        ({"num_heads": 2.0}, "num_heads must be an int"),
        ({"head_dim": -1}, "head_dim must be >= 1"),
        ({"output_dim": 0}, "output_dim must be >= 1"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
        ({"dropout": "0.1"}, "dropout must be a float"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
  with pytest.raises(ValueError, match=message):
    ta.MultiHeadTargetAttention(**kwargs)


def test_bad_inputs_raise():
  query, keys, mask = small_case()
  layer = ta.MultiHeadTargetAttention(num_heads=2, head_dim=4)
  with pytest.raises(ValueError, match="mask must be bool"):
    layer(query, keys, mask.astype(np.float32))
  with pytest.raises(ValueError, match="keys must be"):
    layer(query, keys[:, 0], mask)
  with pytest.raises(ValueError, match="target_attention expects"):
    ta.target_attention(np.zeros([2, 3], np.float32), keys, keys, mask)
  with pytest.raises(ValueError, match="query must be"):
    ta.MultiHeadTargetAttention(num_heads=2, head_dim=4)(
        query[:, 0], keys, mask
    )
