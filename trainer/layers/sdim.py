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
    query: float [B, D], the candidate's embedding.
    keys: float [B, L, D], the behaviours' embeddings; also what is summed.
    mask: bool [B, L], True at real behaviours.
    query_signatures: optional int64 [B, W], packed signatures of `query`
      from this layer's `simhash`, to skip hashing.
    key_signatures: optional int64 [B, L, W], likewise for `keys` (e.g.
      hashed once per distinct item and gathered).

  Output shape:
    float [B, D]: mean over the m / tau signatures of the l2-normalised sum of
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
    # SimHash validates num_bits and seed with its own messages.
    self.simhash = simhash.SimHash(num_bits=num_bits, seed=seed, name="simhash")
    if isinstance(tau, bool) or not isinstance(tau, int):
      raise ValueError(f"tau must be an int, got {tau!r}.")
    if tau < 1 or num_bits % tau:
      raise ValueError(
          f"tau must be >= 1 and divide num_bits={num_bits}, got {tau}."
      )
    self.num_bits = num_bits
    self.tau = tau
    self.seed = seed
    self.num_signatures = num_bits // tau

  def build(self, input_shape):
    query_shape = tf.TensorShape(input_shape)
    if query_shape.rank != 2 or query_shape[-1] is None:
      raise ValueError(
          f"query must be [B, D] with a static D, got {query_shape}."
      )
    self.simhash.build(query_shape)
    super().build(input_shape)

  def _signature_bits(self, words: tf.Tensor) -> tf.Tensor:
    """int64 [..., W] -> bool [..., m / tau, tau]."""
    bits = simhash.unpack_bits(words, self.num_bits)
    return tf.reshape(
        bits,
        tf.concat([tf.shape(bits)[:-1], [self.num_signatures, self.tau]], 0),
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
    if mask.dtype != tf.bool:
      raise ValueError(f"mask must be bool, got {mask.dtype.name}.")
    if keys.shape.rank != 3 or mask.shape.rank != 2:
      raise ValueError(
          f"keys must be [B, L, D] and mask [B, L]; got {keys.shape} and "
          f"{mask.shape}."
      )
    if keys.shape[-1] != query.shape[-1]:
      raise ValueError(
          f"query and keys need the same width D, got {query.shape[-1]} and "
          f"{keys.shape[-1]}."
      )
    if query_signatures is None:
      query_signatures = self.simhash(query)
    if key_signatures is None:
      key_signatures = self.simhash(keys)
    query_bits = self._signature_bits(query_signatures)  # [B, G, tau]
    key_bits = self._signature_bits(key_signatures)  # [B, L, G, tau]
    same_bucket = tf.reduce_all(
        tf.equal(query_bits[:, tf.newaxis], key_bits), axis=-1
    )  # [B, L, G]
    same_bucket = tf.logical_and(same_bucket, mask[:, :, tf.newaxis])
    selection = tf.transpose(tf.cast(same_bucket, keys.dtype), [0, 2, 1])
    bucket_sums = tf.matmul(selection, keys)  # [B, G, D]
    # l2_normalize divides by max(norm, 1e-6): an empty bucket stays zero.
    normalised = tf.math.l2_normalize(bucket_sums, axis=-1, epsilon=1e-12)
    return tf.reduce_mean(normalised, axis=1)

  def compute_output_shape(self, input_shape):
    return tf.TensorShape(input_shape)

  def get_config(self):
    config = super().get_config()
    config.update(
        {"num_bits": self.num_bits, "tau": self.tau, "seed": self.seed}
    )
    return config
