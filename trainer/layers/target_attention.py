"""Multi-head target attention: the candidate as query over behaviours.

Used by ETA over the k retrieved behaviours and by `full_attention` over all
L. The math lives in plain functions too (`target_attention`), so serving can
project one user's history once and score N candidates against it.

Padding gets zero weight; a row with no real behaviour at all gets zero
weights everywhere (hence a zero output), never a NaN from a softmax over
nothing.
"""

from __future__ import annotations

import math
from typing import Optional

import tensorflow as tf

from preprocessing import typed_config
from trainer.layers import input_checks


def attention_weights(
    query: tf.Tensor, keys: tf.Tensor, mask: tf.Tensor
) -> tf.Tensor:
  """Scaled dot-product softmax weights over the real behaviours.

  Args:
    query: float [B, N, H, dh], N candidates sharing one history.
    keys: float [B, L, H, dh].
    mask: bool [B, L], True at real behaviours.

  Returns:
    float [B, H, N, L]: softmax over masked positions; all zeros for a row
    whose mask is all False.
  """
  query_by_head = tf.transpose(query, [0, 2, 1, 3])  # [B, H, N, dh]
  keys_by_head = tf.transpose(keys, [0, 2, 1, 3])  # [B, H, L, dh]
  head_dim = query.shape[-1]
  logits = tf.matmul(query_by_head, keys_by_head, transpose_b=True)
  logits *= 1.0 / math.sqrt(head_dim)
  return masked_softmax(logits, mask[:, tf.newaxis, tf.newaxis, :])


def masked_softmax(logits: tf.Tensor, key_mask: tf.Tensor) -> tf.Tensor:
  """Softmax over the last axis where `key_mask` (broadcastable bool) holds.

  Masked logits sit at the dtype's lowest finite value: the row max stays
  finite, so the shift never computes inf - inf; a fully masked row gets
  zeros, not NaN.
  """
  lowest = tf.constant(logits.dtype.min, logits.dtype)
  logits = tf.where(key_mask, logits, lowest)
  shifted = logits - tf.stop_gradient(
      tf.reduce_max(logits, axis=-1, keepdims=True)
  )
  unnormalised = tf.exp(shifted) * tf.cast(key_mask, logits.dtype)
  total = tf.reduce_sum(unnormalised, axis=-1, keepdims=True)
  return tf.math.divide_no_nan(unnormalised, total)


def weighted_values(weights: tf.Tensor, values: tf.Tensor) -> tf.Tensor:
  """float weights [B, H, N, L] x values [B, L, H, dv] -> [B, N, H, dv]."""
  values_by_head = tf.transpose(values, [0, 2, 1, 3])  # [B, H, L, dv]
  return tf.transpose(tf.matmul(weights, values_by_head), [0, 2, 1, 3])


def target_attention(
    query: tf.Tensor, keys: tf.Tensor, values: tf.Tensor, mask: tf.Tensor
) -> tf.Tensor:
  """Multi-head attention of candidate queries over one history per row.

  Args:
    query: float [B, H, dh] (one candidate per row) or [B, N, H, dh] (N
      candidates sharing the row's history).
    keys: float [B, L, H, dh].
    values: float [B, L, H, dv].
    mask: bool [B, L], True at real behaviours.

  Returns:
    float [B, H, dv] or [B, N, H, dv] (matching `query`); zeros for a row with
    no real behaviour.
  """
  query, keys, values, mask = (
      tf.convert_to_tensor(t) for t in (query, keys, values, mask)
  )
  if (query.shape.rank not in (3, 4) or keys.shape.rank != 4
      or values.shape.rank != 4 or mask.shape.rank != 2
      or mask.dtype != tf.bool):
    raise ValueError(
        "target_attention expects query [B, (N,) H, dh], keys [B, L, H, dh], "
        f"values [B, L, H, dv] and a bool mask [B, L]; got {query.shape}, "
        f"{keys.shape}, {values.shape}, {mask.dtype.name} {mask.shape}."
    )
  single_candidate = query.shape.rank == 3
  if single_candidate:
    query = query[:, tf.newaxis]
  output = weighted_values(attention_weights(query, keys, mask), values)
  return output[:, 0] if single_candidate else output


@tf.keras.utils.register_keras_serializable(package="eta")
class MultiHeadTargetAttention(tf.keras.layers.Layer):
  """Multi-head attention with the candidate as the single query.

  The query and the keys are projected per head (`num_heads` x `head_dim`,
  with bias), the keys also to values of the same size; the heads'
  outputs are concatenated and, when `output_dim` is set, projected without
  bias (so a row with no behaviours still gives exactly zeros).

  Args:
    num_heads: number of heads H >= 1.
    head_dim: per-head size of query, key and value projections, >= 1.
    output_dim: width of the final projection, or None for no projection
      (output width H * head_dim).
    dropout: dropout rate on the attention weights in training, in [0, 1).
    **kwargs: standard Layer arguments.

  Call arguments:
    query: float [B, Dq] (one candidate per row) or [B, N, Dq] (N candidates
      sharing the row's history; the keys are projected once).
    keys: float [B, L, Dk], behaviour embeddings (with side features
      concatenated, if any). Dq and Dk may differ.
    mask: bool [B, L], True at real behaviours.
    training: Python bool or None, enables dropout.

  Output shape:
    float [B, output_dim] or [B, N, output_dim] (H * head_dim when
    output_dim is None).

  Example:
    >>> attention = MultiHeadTargetAttention(num_heads=2, head_dim=8)
    >>> attention(tf.ones([3, 16]), tf.ones([3, 10, 24]),
    ...           mask=tf.ones([3, 10], tf.bool)).shape
    TensorShape([3, 16])
  """

  def __init__(
      self,
      num_heads: int = 4,
      head_dim: int = 16,
      output_dim: Optional[int] = None,
      dropout: float = 0.0,
      **kwargs,
  ):
    super().__init__(**kwargs)
    typed_config.int_value("num_heads", num_heads, 1)
    typed_config.int_value("head_dim", head_dim, 1)
    if output_dim is not None:
      typed_config.int_value("output_dim", output_dim, 1)
    typed_config.float_value("dropout", dropout, 0.0, 1.0, high_open=True)
    self.num_heads = num_heads
    self.head_dim = head_dim
    self.output_dim = output_dim
    self.dropout = float(dropout)

  def build(self, input_shape):
    query_shape = tf.TensorShape(input_shape)
    if query_shape.rank not in (2, 3) or query_shape[-1] is None:
      raise ValueError(
          "query must be [B, Dq] or [B, N, Dq] with a static Dq, got "
          f"{query_shape}."
      )
    width = self.num_heads * self.head_dim
    self.query_projection = tf.keras.layers.Dense(width, name="query")
    self.query_projection.build(query_shape)
    # Keys may carry side features, so their width is only known at the
    # first call; these Dense layers create their kernels then.
    self.key_projection = tf.keras.layers.Dense(width, name="key")
    self.value_projection = tf.keras.layers.Dense(width, name="value")
    self.output_projection = None
    if self.output_dim is not None:
      self.output_projection = tf.keras.layers.Dense(
          self.output_dim, use_bias=False, name="output"
      )
      self.output_projection.build(query_shape[:-1].concatenate([width]))
    self.weight_dropout = tf.keras.layers.Dropout(self.dropout)
    super().build(input_shape)

  def _split_heads(self, projected: tf.Tensor) -> tf.Tensor:
    """[..., H * dh] -> [..., H, dh]."""
    return tf.reshape(
        projected,
        tf.concat(
            [tf.shape(projected)[:-1], [self.num_heads, self.head_dim]], 0
        ),
    )

  def call(self, query, keys, mask, training=None):
    query = tf.convert_to_tensor(query)
    keys = tf.convert_to_tensor(keys)
    mask = tf.convert_to_tensor(mask)
    input_checks.check_bool_mask(mask)
    if keys.shape.rank != 3 or mask.shape.rank != 2:
      raise ValueError(
          f"keys must be [B, L, Dk] and mask [B, L]; got {keys.shape} and "
          f"{mask.shape}."
      )
    single_candidate = query.shape.rank == 2
    if single_candidate:
      query = query[:, tf.newaxis]
    heads_query = self._split_heads(self.query_projection(query))
    heads_keys = self._split_heads(self.key_projection(keys))
    heads_values = self._split_heads(self.value_projection(keys))
    weights = attention_weights(heads_query, heads_keys, mask)
    weights = self.weight_dropout(weights, training=training)
    heads = weighted_values(weights, heads_values)  # [B, N, H, dh]
    output = tf.reshape(
        heads,
        tf.concat([tf.shape(heads)[:2], [self.num_heads * self.head_dim]], 0),
    )
    if self.output_projection is not None:
      output = self.output_projection(output)
    return output[:, 0] if single_candidate else output

  def gathered(self, query, keys, slots, valid):
    """Each query attends over its own rows of one shared key table (inference).

    Serving's retrieval-based `rank`: the N candidates retrieved k
    behaviours each from one history; the distinct retrieved behaviours'
    keys are projected ONCE here and gathered per candidate, instead of
    projecting N * k keys.

    Args:
      query: float [N, Dq].
      keys: float [U, Dk], the distinct behaviours' keys.
      slots: int32 [N, k], rows of `keys` each query attends over.
      valid: bool [N, k].

    Returns:
      float [N, output width], equal to `call` on the gathered keys.
    """
    query = tf.convert_to_tensor(query)
    # Per-query rows: products and sums, not the batched matmuls of `call`
    # (N x H matmuls of [1, dh] x [dh, k], and their transposes, cost more).
    heads_keys = tf.gather(self._split_heads(self.key_projection(keys)), slots)
    heads_values = tf.gather(self._split_heads(self.value_projection(keys)), slots)
    heads_query = self._split_heads(self.query_projection(query))  # [N, H, dh]
    logits = tf.reduce_sum(heads_query[:, tf.newaxis] * heads_keys, axis=-1)
    logits *= 1.0 / math.sqrt(self.head_dim)  # [N, k, H]
    weights = masked_softmax(
        tf.transpose(logits, [0, 2, 1]), valid[:, tf.newaxis, :]
    )  # [N, H, k]
    heads = tf.reduce_sum(
        tf.transpose(weights, [0, 2, 1])[..., tf.newaxis] * heads_values, axis=1
    )  # [N, H, dh]
    output = tf.reshape(heads, [-1, self.num_heads * self.head_dim])
    if self.output_projection is not None:
      output = self.output_projection(output)
    return output

  def compute_output_shape(self, input_shape):
    width = self.output_dim or self.num_heads * self.head_dim
    return tf.TensorShape(input_shape)[:-1].concatenate([width])

  def get_config(self):
    config = super().get_config()
    config.update({
        "num_heads": self.num_heads,
        "head_dim": self.head_dim,
        "output_dim": self.output_dim,
        "dropout": self.dropout,
    })
    return config
