"""SDIM aggregation (arXiv 2205.10249): hash-bucket sampling of behaviours.

SDIM replaces attention with hashing: the m SimHash bits of the candidate and
of each behaviour are cut into m / tau signatures of tau consecutive bits.
For each signature, the behaviours whose signature equals the candidate's are
summed and the sum is l2-normalised; the user's interest is the mean over the
signatures. A behaviour at angle theta collides with probability
(1 - theta / pi) ** tau per signature, which acts as the attention weight
without computing any.
"""

from __future__ import annotations

from typing import Optional

import tensorflow as tf

from preprocessing import typed_config
from trainer.layers import input_checks
from trainer.layers import simhash


@tf.keras.utils.register_keras_serializable(package="eta")
class SdimAggregation(tf.keras.layers.Layer):
  """SDIM's multi-round hash aggregation for one candidate per row.

  Args:
    num_bits: SimHash bits m, one of simhash.ALLOWED_NUM_BITS (paper: 48).
    tau: bits per signature, >= 1, dividing num_bits (paper: 3).
    seed: seed of the fixed projection (see simhash.SimHash).
    **kwargs: standard Layer arguments.

  Call arguments:
    query: float [B, D], the candidate's embedding, or [B, N, D] for N
      candidates sharing the row's history (serving's `rank`).
    keys: float [B, L, D], the behaviours' embeddings; also what is summed.
    mask: bool [B, L], True at real behaviours.
    query_signatures: optional int64 [B, W], packed signatures of `query`
      from this layer's `simhash`, to skip hashing.
    key_signatures: optional int64 [B, L, W], likewise for `keys` (e.g.
      hashed once per distinct item and gathered).

  Output shape:
    float [B, D] (or [B, N, D]): mean over the m / tau signatures of the l2-normalised sum of
    the real behaviours sharing the candidate's signature (a signature with no
    such behaviour contributes zeros).

  Example:
    >>> sdim = SdimAggregation(num_bits=48, tau=3, seed=1)
    >>> sdim(tf.ones([2, 8]), tf.ones([2, 100, 8]),
    ...      mask=tf.ones([2, 100], tf.bool)).shape
    TensorShape([2, 8])
  """

  def __init__(self, num_bits: int = 48, tau: int = 3, seed: int = 0,
               **kwargs):
    super().__init__(**kwargs)
    # SimHash validates num_bits and seed.
    self.simhash = simhash.SimHash(num_bits=num_bits, seed=seed, name="simhash")
    typed_config.int_value("tau", tau, 1)
    if num_bits % tau:
      raise typed_config.ConfigError(
          f"tau must be >= 1 and divide num_bits={num_bits}, got {tau}."
      )
    self.num_bits = num_bits
    self.tau = tau
    self.seed = seed
    self.num_signatures = num_bits // tau

  def build(self, input_shape):
    query_shape = tf.TensorShape(input_shape)
    if query_shape.rank not in (2, 3) or query_shape[-1] is None:
      raise ValueError(
          f"query must be [B, D] or [B, N, D] with a static D, got {query_shape}."
      )
    self.simhash.build(query_shape)
    super().build(input_shape)

  def signature_codes(self, words: tf.Tensor) -> tf.Tensor:
    """int64 [..., W] packed signatures -> int64 [..., m / tau] codes.

    Each tau-bit signature becomes one integer (equal codes = equal bits),
    so a bucket match is one comparison instead of tau.
    """
    bits = simhash.unpack_bits(words, self.num_bits)
    grouped = tf.reshape(
        bits,
        tf.concat([tf.shape(bits)[:-1], [self.num_signatures, self.tau]], 0),
    )
    place_values = tf.bitwise.left_shift(
        tf.constant(1, tf.int64), tf.range(self.tau, dtype=tf.int64)
    )
    return tf.reduce_sum(
        tf.where(grouped, place_values, tf.zeros_like(place_values)), axis=-1
    )

  def call(
      self,
      query,
      keys,
      mask,
      query_signatures: Optional[tf.Tensor] = None,
      key_signatures: Optional[tf.Tensor] = None,
  ):
    query = tf.convert_to_tensor(query)
    keys = tf.convert_to_tensor(keys)
    mask = tf.convert_to_tensor(mask)
    input_checks.check_bool_mask(mask)
    if keys.shape.rank != 3 or mask.shape.rank != 2 or query.shape.rank not in (2, 3):
      raise ValueError(
          f"query must be [B, D] or [B, N, D], keys [B, L, D] and mask [B, L]; "
          f"got {query.shape}, {keys.shape} and {mask.shape}."
      )
    input_checks.check_same_width(query, keys)
    single_candidate = query.shape.rank == 2
    if query_signatures is None:
      query_signatures = self.simhash(query)
    if key_signatures is None:
      key_signatures = self.simhash(keys)
    query_codes = self.signature_codes(query_signatures)  # [B, (N,) G]
    if single_candidate:
      query_codes = query_codes[:, tf.newaxis]
    key_codes = self.signature_codes(key_signatures)  # [B, L, G]
    same_bucket = tf.equal(
        query_codes[:, :, tf.newaxis, :], key_codes[:, tf.newaxis]
    )  # [B, N, L, G]
    same_bucket = tf.logical_and(same_bucket, mask[:, tf.newaxis, :, tf.newaxis])
    # One contraction: the behaviours are never copied per candidate.
    bucket_sums = tf.einsum(
        "bnlg,bld->bngd", tf.cast(same_bucket, keys.dtype), keys
    )
    # l2_normalize divides by max(norm, 1e-6): an empty bucket stays zero.
    normalised = tf.math.l2_normalize(bucket_sums, axis=-1, epsilon=1e-12)
    output = tf.reduce_mean(normalised, axis=2)  # [B, N, D]
    return output[:, 0] if single_candidate else output

  def compute_output_shape(self, input_shape):
    return tf.TensorShape(input_shape)

  def get_config(self):
    config = super().get_config()
    config.update(
        {"num_bits": self.num_bits, "tau": self.tau, "seed": self.seed}
    )
    return config
