"""SimHash layer, bit packing and Hamming distance against numpy references."""

import math

import numpy as np
import pytest
import tensorflow as tf

from trainer.layers import simhash

ALL_NUM_BITS = (16, 32, 48, 64, 128)
# Unit roundoff of float32.
_U32 = 2.0**-24


def np_pack(bits: np.ndarray) -> np.ndarray:
  """Reference packing: bit j of word w = bits[..., 64 w + j], LSB first."""
  m = bits.shape[-1]
  words = -(-m // 64)
  padded = np.zeros(bits.shape[:-1] + (words * 64,), dtype=np.uint64)
  padded[..., :m] = bits
  grouped = padded.reshape(bits.shape[:-1] + (words, 64))
  shifts = np.arange(64, dtype=np.uint64)
  return np.bitwise_or.reduce(grouped << shifts, axis=-1).view(np.int64)


def np_unpack(words: np.ndarray, num_bits: int) -> np.ndarray:
  as_uint = words.astype(np.int64).view(np.uint64)
  bits = (as_uint[..., None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)
  return bits.reshape(words.shape[:-1] + (-1,))[..., :num_bits].astype(bool)


def np_popcount_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  xor = np.bitwise_xor(a.astype(np.int64), b.astype(np.int64))
  as_bytes = np.ascontiguousarray(xor).view(np.uint8)
  return np.unpackbits(as_bytes, axis=-1).sum(axis=-1).astype(np.int32)


def reference_bits(x: np.ndarray, projection: np.ndarray):
  """x @ R > 0 in float64, and where float32 rounding could flip the sign.

  A float32 dot product of length d has absolute error at most
  gamma_d * sum_i |x_i| |r_i| with gamma_d = d u / (1 - d u) (Higham, 3.1);
  bits whose float64 projection lies within that bound are undecidable.
  """
  x64 = x.astype(np.float64)
  r64 = projection.astype(np.float64)
  d = x.shape[-1]
  gamma = d * _U32 / (1 - d * _U32)
  undecidable = np.abs(x64 @ r64) <= 2 * gamma * (np.abs(x64) @ np.abs(r64))
  return x64 @ r64 > 0, undecidable


@pytest.mark.parametrize("num_bits", ALL_NUM_BITS)
def test_bits_equal_numpy_sign_of_projection(num_bits):
  rng = np.random.default_rng(num_bits)
  layer = simhash.SimHash(num_bits=num_bits, seed=11)
  # Rank 2 with many rows (the shape where oneDNN's einsum went wrong) and
  # rank 3 (a batch of histories).
  for shape in [(1025, 24), (3, 40, 24)]:
    x = rng.standard_normal(shape).astype(np.float32)
    words = layer(tf.constant(x)).numpy()
    assert words.dtype == np.int64
    assert words.shape == shape[:-1] + (math.ceil(num_bits / 64),)
    expected, undecidable = reference_bits(x, layer.projection.numpy())
    got = np_unpack(words, num_bits)
    assert undecidable.mean() < 1e-3
    np.testing.assert_array_equal(got[~undecidable], expected[~undecidable])
    # Unused high bits of the last word stay zero.
    if num_bits % 64:
      tail = np_unpack(words, math.ceil(num_bits / 64) * 64)[..., num_bits:]
      assert not tail.any()


@pytest.mark.parametrize("num_bits", ALL_NUM_BITS + (1, 65, 100))
def test_pack_bits_equals_numpy_packing(num_bits):
  rng = np.random.default_rng(num_bits)
  bits = rng.random((5, 7, num_bits)) < 0.5
  bits[0, 0] = True  # All ones: the sign bit and -1 for a full word.
  got = simhash.pack_bits(tf.constant(bits)).numpy()
  np.testing.assert_array_equal(got, np_pack(bits))
  np.testing.assert_array_equal(
      simhash.unpack_bits(tf.constant(got), num_bits).numpy(), bits
  )


def test_pack_bits_hand_example():
  bits = np.zeros([64], bool)
  bits[[0, 2, 63]] = True  # 1 + 4 + 2**63 as a two's-complement int64.
  assert simhash.pack_bits(tf.constant(bits)).numpy().tolist() == [
      -(2**63) + 5
  ]


@pytest.mark.parametrize("words", [1, 2])
def test_hamming_distance_equals_numpy_popcount(words):
  rng = np.random.default_rng(words)
  a = rng.integers(-(2**63), 2**63 - 1, size=(6, 1, words), dtype=np.int64)
  b = rng.integers(-(2**63), 2**63 - 1, size=(6, 9, words), dtype=np.int64)
  b[0, 0] = a[0, 0]
  b[1, 0] = ~a[1, 0]
  got = simhash.hamming_distance(tf.constant(a), tf.constant(b)).numpy()
  assert got.dtype == np.int32 and got.shape == (6, 9)
  np.testing.assert_array_equal(got, np_popcount_distance(a, b))
  assert got[0, 0] == 0 and got[1, 0] == 64 * words
  by_bin = [bin(int(x) & (2**64 - 1)).count("1") for x in (a[2, 0] ^ b[2, 3])]
  assert got[2, 3] == sum(by_bin)


def test_hamming_distance_under_xla_equals_eager():
  rng = np.random.default_rng(3)
  a = tf.constant(rng.integers(-(2**63), 2**63 - 1, (4, 1, 2), dtype=np.int64))
  b = tf.constant(rng.integers(-(2**63), 2**63 - 1, (4, 30, 2), dtype=np.int64))
  jitted = tf.function(simhash.hamming_distance, jit_compile=True)
  np.testing.assert_array_equal(
      jitted(a, b).numpy(), simhash.hamming_distance(a, b).numpy()
  )


def test_projection_is_fixed_seeded_standard_normal_and_not_trainable():
  layer = simhash.SimHash(num_bits=128, seed=5)
  layer.build([None, 64])
  assert layer.trainable_weights == []
  assert len(layer.non_trainable_weights) == 1
  assert layer.non_trainable_weights[0] is layer.projection
  assert layer.projection.shape == (64, 128)
  assert layer.projection.dtype == tf.float32
  same = simhash.SimHash(num_bits=128, seed=5)
  same.build([None, 64])
  other = simhash.SimHash(num_bits=128, seed=6)
  other.build([None, 64])
  r = layer.projection.numpy()
  np.testing.assert_array_equal(r, same.projection.numpy())
  assert not np.array_equal(r, other.projection.numpy())
  # N(0, 1): 8192 draws, mean within 5 standard errors, variance within 5
  # standard errors of the sample variance (sqrt(2 / n)).
  n = r.size
  assert abs(r.mean()) < 5 / math.sqrt(n)
  assert abs(r.var() - 1) < 5 * math.sqrt(2 / n)
  # Calling the layer never re-samples it.
  layer(tf.ones([2, 64]))
  layer(tf.ones([3, 64]))
  np.testing.assert_array_equal(layer.projection.numpy(), r)


def test_training_steps_leave_projection_unchanged():
  """A model trains through an embedding that feeds SimHash; R stays put."""
  rng = np.random.default_rng(0)
  encoder = tf.keras.layers.Dense(16)
  hasher = simhash.SimHash(num_bits=64, seed=2)
  head = tf.keras.layers.Dense(1)
  x = tf.constant(rng.standard_normal((32, 8)), tf.float32)
  y = tf.constant(rng.random((32, 1)) < 0.5, tf.float32)
  optimizer = tf.keras.optimizers.SGD(0.5)
  encoder(x)
  hasher(encoder(x))
  before = hasher.projection.numpy().copy()
  encoder_before = encoder.kernel.numpy().copy()
  for _ in range(3):
    with tf.GradientTape() as tape:
      embedded = encoder(x)
      bits = tf.cast(simhash.unpack_bits(hasher(embedded), 64), tf.float32)
      logits = head(tf.concat([embedded, bits], axis=-1))
      loss = tf.reduce_mean(
          tf.nn.sigmoid_cross_entropy_with_logits(labels=y, logits=logits)
      )
    variables = (
        encoder.trainable_weights + head.trainable_weights
        + hasher.trainable_weights
    )
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
  assert not np.allclose(encoder.kernel.numpy(), encoder_before)
  np.testing.assert_array_equal(hasher.projection.numpy(), before)


def _wrapped_model(num_bits=64, seed=9, dim=12):
  inputs = tf.keras.Input([7, dim])
  outputs = simhash.SimHash(num_bits=num_bits, seed=seed, name="hash")(inputs)
  return tf.keras.Model(inputs, outputs)


def test_savedmodel_round_trip_gives_identical_signatures(tmp_path):
  model = _wrapped_model()
  x = tf.constant(np.random.default_rng(1).standard_normal((4, 7, 12)),
                  tf.float32)
  expected = model(x).numpy()
  path = str(tmp_path / "simhash_model")
  model.save(path)
  reloaded = tf.keras.models.load_model(path)
  np.testing.assert_array_equal(reloaded(x).numpy(), expected)
  np.testing.assert_array_equal(
      reloaded.get_layer("hash").projection.numpy(),
      model.get_layer("hash").projection.numpy(),
  )
  # Plain TF, no Keras objects: the projection travels as a variable.
  restored = tf.saved_model.load(path)
  served = restored.signatures["serving_default"](x)
  np.testing.assert_array_equal(list(served.values())[0].numpy(), expected)


def test_config_round_trip_rebuilds_the_same_projection():
  layer = simhash.SimHash(num_bits=48, seed=123, name="h")
  x = tf.constant(np.random.default_rng(2).standard_normal((5, 10)), tf.float32)
  expected = layer(x).numpy()
  config = layer.get_config()
  assert config["num_bits"] == 48 and config["seed"] == 123
  clone = simhash.SimHash.from_config(config)
  np.testing.assert_array_equal(clone(x).numpy(), expected)
  restored = tf.keras.layers.deserialize(tf.keras.layers.serialize(layer))
  assert isinstance(restored, simhash.SimHash)
  np.testing.assert_array_equal(restored(x).numpy(), expected)


@pytest.mark.parametrize("num_bits", [48, 128])
def test_xla_equals_eager(num_bits):
  layer = simhash.SimHash(num_bits=num_bits, seed=4)
  x = tf.constant(np.random.default_rng(3).standard_normal((8, 50, 16)),
                  tf.float32)
  eager = layer(x).numpy()
  jitted = tf.function(layer, jit_compile=True)(x).numpy()
  # Identical except where XLA's summation order flips a near-zero projection.
  _, undecidable = reference_bits(x.numpy(), layer.projection.numpy())
  differ = np_unpack(eager, num_bits) != np_unpack(jitted, num_bits)
  assert not (differ & ~undecidable).any()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num_bits": 20}, "num_bits must be one of"),
        ({"num_bits": 0}, "num_bits must be one of"),
        ({"num_bits": "64"}, "num_bits must be an int"),
        ({"num_bits": True}, "num_bits must be an int"),
        ({"seed": -1}, "seed must be in"),
        ({"seed": 1.5}, "seed must be an int"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
  with pytest.raises(ValueError, match=message):
    simhash.SimHash(**kwargs)


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match="static last input dimension"):
    simhash.SimHash(num_bits=16).build([None, None])
  with pytest.raises(ValueError, match="bool bits"):
    simhash.pack_bits(tf.zeros([3, 8], tf.int32))
  with pytest.raises(ValueError, match="int64 packed signatures"):
    simhash.hamming_distance(tf.zeros([2, 1], tf.int32),
                             tf.zeros([2, 1], tf.int32))
  with pytest.raises(ValueError, match="need 1 words"):
    simhash.unpack_bits(tf.zeros([2, 2], tf.int64), 64)


def _pairs_at_angle(rng, n, d, theta):
  """n pairs (x, y) at angle theta, uniformly rotated (Haar)."""
  x = rng.standard_normal((n, d))
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  u = rng.standard_normal((n, d))
  u -= (u * x).sum(1, keepdims=True) * x
  u /= np.linalg.norm(u, axis=1, keepdims=True)
  y = math.cos(theta) * x + math.sin(theta) * u
  return x.astype(np.float32), y.astype(np.float32)


@pytest.mark.parametrize("theta", [math.pi / 8, math.pi / 4, math.pi / 2,
                                   3 * math.pi / 4])
def test_bit_differs_with_probability_theta_over_pi(theta):
  """P(bit j differs) = theta / pi for every bit, and on average.

  For a fixed hyperplane r_j and a uniformly rotated pair at angle theta, the
  pair is separated with probability exactly theta / pi. Pairs are
  independent, so given the layer's fixed R the count of separated pairs for
  bit j is Binomial(n, p): each bit's rate must lie within 5 binomial
  standard errors (two-sided 6e-7 per test; 512 tests over the four angles).
  The mean over the m bits is an average of variables with that variance, so
  its variance is at most p (1 - p) / n whatever their correlation: same
  5-sigma bound.
  """
  n, d, m = 20000, 64, 128
  rng = np.random.default_rng(int(theta * 1000))
  x, y = _pairs_at_angle(rng, n, d, theta)
  layer = simhash.SimHash(num_bits=m, seed=31)
  differs = np_unpack(layer(tf.constant(x)).numpy(), m) != np_unpack(
      layer(tf.constant(y)).numpy(), m
  )
  p = theta / math.pi
  tolerance = 5 * math.sqrt(p * (1 - p) / n)
  per_bit = differs.mean(axis=0)
  assert np.all(np.abs(per_bit - p) < tolerance), per_bit
  assert abs(differs.mean() - p) < tolerance
  distance = simhash.hamming_distance(layer(tf.constant(x)),
                                      layer(tf.constant(y))).numpy()
  np.testing.assert_array_equal(distance, differs.sum(axis=1))


def test_recall_of_exact_cosine_top_k_at_64_bits():
  """Hamming top-k recalls the exact cosine top-k as well as theory says.

  Each trial draws a fresh projection (seed), L = 1024 random keys and a
  query (d = 64) and compares the k = 64 smallest Hamming distances (m = 64,
  ties to the lower index) with the k largest cosines. For one key at angle
  theta, the distance is exactly Binomial(m, theta / pi) over the projection.
  The reference recall draws these distances independently per key for the
  same keys and queries (numpy, no SimHash code) and ranks them the same way.
  The real distances share one projection per trial, which correlates them
  across keys but leaves each marginal exact; measured on this setup the two
  agree within 2 %, so the bound is 85 % of the reference mean. Chance level
  is k / L = 0.0625 and a wrong bit, packing or popcount drags recall to it.
  """
  d, length, k, m, trials = 64, 1024, 64, 64, 60
  rng = np.random.default_rng(7)
  measured, reference = [], []
  for trial in range(trials):
    keys = rng.standard_normal((length, d)).astype(np.float32)
    query = rng.standard_normal((1, d)).astype(np.float32)
    cosine = (keys @ query[0]) / (
        np.linalg.norm(keys, axis=1) * np.linalg.norm(query)
    )
    exact = set(np.argsort(-cosine, kind="stable")[:k].tolist())
    layer = simhash.SimHash(num_bits=m, seed=1000 + trial)
    distance = simhash.hamming_distance(
        layer(tf.constant(query)), layer(tf.constant(keys))
    ).numpy()
    retrieved = np.argsort(distance, kind="stable")[:k]
    measured.append(len(exact.intersection(retrieved.tolist())) / k)
    theta = np.arccos(np.clip(cosine, -1.0, 1.0))
    simulated = rng.binomial(m, theta / math.pi)
    simulated_top = np.argsort(simulated, kind="stable")[:k]
    reference.append(len(exact.intersection(simulated_top.tolist())) / k)
  bound = 0.85 * np.mean(reference)
  assert np.mean(measured) >= bound, (np.mean(measured), np.mean(reference))
  assert bound > 3 * k / length
