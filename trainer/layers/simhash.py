"""SimHash signatures: a fixed random projection, sign bits packed into int64.

ETA (arXiv 2108.04468) hashes the candidate's and every behaviour's embedding
with the same fixed N(0, 1) matrix R [d, m]: bit j of a signature is
`(e @ R)[j] > 0`, so two embeddings at angle theta differ in each bit with
probability theta / pi and the Hamming distance between signatures estimates
the angle. Bits are packed 64 to an int64 word, and distances are XOR plus
popcount on the words, never arithmetic on float bit vectors.

The projection is a non-trainable weight created once in `build` from the
seed (stateless Philox, so the same seed gives the same matrix on every
device) and saved with the model; nothing re-samples it afterwards.
"""

from __future__ import annotations

import math

import tensorflow as tf

from preprocessing import typed_config

ALLOWED_NUM_BITS: tuple[int, ...] = (16, 32, 48, 64, 128)
BITS_PER_WORD = 64


def num_words(num_bits: int) -> int:
  """Number of int64 words that hold `num_bits` packed bits."""
  return math.ceil(num_bits / BITS_PER_WORD)


def pack_bits(bits: tf.Tensor) -> tf.Tensor:
  """Packs a boolean bit vector into int64 words.

  Bit j of word w is `bits[..., 64 * w + j]` (least significant bit first);
  bit 63 is the sign bit of the int64. Unused high bits of the last word are 0.

  Args:
    bits: bool [..., m] with a static m.

  Returns:
    int64 [..., ceil(m / 64)].
  """
  bits = tf.convert_to_tensor(bits)
  if bits.dtype != tf.bool:
    raise ValueError(f"pack_bits expects bool bits, got {bits.dtype.name}.")
  m = bits.shape[-1]
  if m is None:
    raise ValueError("pack_bits needs a static last dimension (bit count).")
  words = num_words(m)
  padded_bits = words * BITS_PER_WORD
  if padded_bits != m:
    paddings = [[0, 0]] * (bits.shape.rank - 1) + [[0, padded_bits - m]]
    bits = tf.pad(bits, paddings, constant_values=False)
  grouped = tf.reshape(
      bits,
      tf.concat([tf.shape(bits)[:-1], [words, BITS_PER_WORD]], axis=0),
  )
  place_values = tf.bitwise.left_shift(
      tf.ones([BITS_PER_WORD], tf.int64),
      tf.range(BITS_PER_WORD, dtype=tf.int64),
  )
  # The place values are distinct powers of two (1 << 63 is int64 min), so the
  # sum equals a bitwise OR and cannot overflow.
  return tf.reduce_sum(
      tf.where(grouped, place_values, tf.zeros_like(place_values)), axis=-1
  )


def unpack_bits(words: tf.Tensor, num_bits: int) -> tf.Tensor:
  """Inverse of `pack_bits`: int64 [..., W] -> bool [..., num_bits]."""
  words = tf.convert_to_tensor(words)
  if words.dtype != tf.int64:
    raise ValueError(f"unpack_bits expects int64 words, got {words.dtype.name}.")
  if words.shape[-1] is None or words.shape[-1] != num_words(num_bits):
    raise ValueError(
        f"{num_bits} bits need {num_words(num_bits)} words, got last "
        f"dimension {words.shape[-1]}."
    )
  shifted = tf.bitwise.right_shift(
      words[..., tf.newaxis], tf.range(BITS_PER_WORD, dtype=tf.int64)
  )
  bits = tf.equal(tf.bitwise.bitwise_and(shifted, tf.constant(1, tf.int64)), 1)
  flat = tf.reshape(
      bits,
      tf.concat(
          [tf.shape(words)[:-1], [words.shape[-1] * BITS_PER_WORD]], axis=0
      ),
  )
  return flat[..., :num_bits]


def hamming_distance(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
  """Hamming distance between packed signatures.

  Args:
    a: int64 [..., W] packed signatures.
    b: int64 [..., W], broadcastable against `a` (e.g. a [B, 1, W] query
      against b [B, L, W] keys).

  Returns:
    int32 [...]: number of differing bits, summed over the W words.
  """
  a = tf.convert_to_tensor(a)
  b = tf.convert_to_tensor(b)
  if a.dtype != tf.int64 or b.dtype != tf.int64:
    raise ValueError(
        "hamming_distance expects int64 packed signatures, got "
        f"{a.dtype.name} and {b.dtype.name}."
    )
  differing = tf.bitwise.bitwise_xor(a, b)
  # tf.bitwise has no popcount in TF 2.16; PopulationCount returns uint8.
  per_word = tf.cast(tf.raw_ops.PopulationCount(x=differing), tf.int32)
  if per_word.shape[-1] == 1:
    # One word (m <= 64): a reshape, not another pass over the distances.
    return tf.reshape(per_word, tf.shape(per_word)[:-1])
  return tf.reduce_sum(per_word, axis=-1)


@tf.keras.utils.register_keras_serializable(package="eta")
class SimHash(tf.keras.layers.Layer):
  """Packed SimHash signatures of float vectors.

  Args:
    num_bits: signature length m, one of 16, 32, 48, 64, 128.
    seed: seed of the projection (stateless Philox; same seed, same matrix).
    **kwargs: standard Layer arguments (name, dtype, ...).

  Input shape:
    float [..., d] with a static d (any float dtype; hashed in float32).

  Output shape:
    int64 [..., ceil(m / 64)]: bit j of word w is `(x @ R)[..., 64 * w + j] > 0`
    where R is the non-trainable float32 weight `projection` [d, m].

  Example:
    >>> simhash = SimHash(num_bits=64, seed=7)
    >>> simhash(tf.ones([2, 5, 16])).shape
    TensorShape([2, 5, 1])
  """

  def __init__(self, num_bits: int = 64, seed: int = 0, **kwargs):
    super().__init__(**kwargs)
    typed_config.int_value("num_bits", num_bits)
    if num_bits not in ALLOWED_NUM_BITS:
      raise typed_config.ConfigError(
          f"num_bits must be one of {ALLOWED_NUM_BITS}, got {num_bits}."
      )
    typed_config.int_value("seed", seed, 0, 2**63 - 1)
    self.num_bits = num_bits
    self.seed = seed
    self.num_words = num_words(num_bits)

  def _initial_projection(self, shape, dtype=None):
    del dtype  # The projection is float32 whatever the layer's policy.
    return tf.random.stateless_normal(
        shape, seed=[self.seed, 0], dtype=tf.float32, alg="philox"
    )

  def build(self, input_shape):
    input_dim = tf.TensorShape(input_shape)[-1]
    if input_dim is None:
      raise ValueError(
          f"SimHash needs a static last input dimension, got {input_shape}."
      )
    self.projection = self.add_weight(
        name="projection",
        shape=[int(input_dim), self.num_bits],
        dtype=tf.float32,
        initializer=self._initial_projection,
        trainable=False,
    )
    super().build(input_shape)

  def project(self, inputs: tf.Tensor) -> tf.Tensor:
    """float [..., d] -> float32 [..., m]: the projections before the sign."""
    inputs = tf.cast(inputs, tf.float32)
    # Not tf.einsum("...d,dm->...m"): with oneDNN on CPU (TF 2.16.2) it
    # returns wrong rows when "..." covers a single axis (a [N, d] input).
    return tf.tensordot(inputs, self.projection, axes=[[-1], [0]])

  def call(self, inputs):
    return pack_bits(self.project(inputs) > 0)

  def compute_output_shape(self, input_shape):
    return tf.TensorShape(input_shape)[:-1].concatenate([self.num_words])

  def get_config(self):
    config = super().get_config()
    config.update({"num_bits": self.num_bits, "seed": self.seed})
    return config
