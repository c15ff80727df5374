"""DIN attention (arXiv 1706.06978): the short-term branch of ETA.

An activation unit (an MLP over [q, k, q - k, q * k]) scores every behaviour
against the candidate; the output is the score-weighted SUM of the real
behaviours' embeddings. As in the DIN paper there is no softmax, so the
output's scale carries how much of the history is relevant.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from preprocessing import typed_config
from trainer.layers import input_checks


@tf.keras.utils.register_keras_serializable(package="eta")
class DinAttention(tf.keras.layers.Layer):
  """Masked DIN attention pooling of behaviours for one candidate.

  Args:
    hidden_units: widths of the activation unit's hidden layers (each >= 1;
      empty for a single linear scorer). DIN's released code uses (80, 40).
    activation: Keras activation name of the hidden layers ("sigmoid" as in
      DIN's released code; "relu", "gelu", ...).
    **kwargs: standard Layer arguments.

  Call arguments:
    query: float [B, D], the candidate's embedding.
    keys: float [B, L, D], the behaviours' embeddings (same D).
    mask: bool [B, L], True at real behaviours.

  Output shape:
    float [B, D]: sum over real l of score(q, k_l) * k_l; zeros when a row has
    no real behaviour.

  Example:
    >>> din = DinAttention(hidden_units=[16, 8])
    >>> din(tf.ones([2, 4]), tf.ones([2, 50, 4]),
    ...     mask=tf.ones([2, 50], tf.bool)).shape
    TensorShape([2, 4])
  """

  def __init__(
      self,
      hidden_units: Sequence[int] = (80, 40),
      activation: str = "sigmoid",
      **kwargs,
  ):
    super().__init__(**kwargs)
    typed_config.units_value("hidden_units", hidden_units, allow_empty=True)
    if not isinstance(activation, str):
      raise ValueError(f"activation must be a name, got {activation!r}.")
    try:
      tf.keras.activations.get(activation)
    except ValueError as error:
      raise ValueError(f"unknown activation {activation!r}.") from error
    self.hidden_units = tuple(hidden_units)
    self.activation = activation

  def build(self, input_shape):
    query_shape = tf.TensorShape(input_shape)
    if query_shape.rank != 2 or query_shape[-1] is None:
      raise ValueError(
          f"query must be [B, D] with a static D, got {query_shape}."
      )
    width = 4 * int(query_shape[-1])
    self.hidden_layers = []
    for index, units in enumerate(self.hidden_units):
      dense = tf.keras.layers.Dense(
          units, activation=self.activation, name=f"hidden_{index}"
      )
      dense.build([None, None, width])
      self.hidden_layers.append(dense)
      width = units
    self.score_layer = tf.keras.layers.Dense(1, name="score")
    self.score_layer.build([None, None, width])
    super().build(input_shape)

  def _pair_scores(self, query: tf.Tensor, keys: tf.Tensor) -> tf.Tensor:
    """query [B, N, D] x keys [B, L, D] -> activation-unit scores [B, N, L].

    The first layer's input [q, k, q - k, q * k] is linear in q and k except
    for q * k, so its kernel is applied in parts: q (Wq + Wd) once per
    candidate, k (Wk - Wd) once per behaviour, and only (q * k) Wp per pair.
    Equal to the concatenated form; with N candidates sharing one history
    the behaviour half is computed once instead of N times.
    """
    width = query.shape[-1]
    hidden_layers = list(self.hidden_layers) + [self.score_layer]
    first = hidden_layers[0]
    w_query, w_key, w_difference, w_product = tf.split(first.kernel, 4, axis=0)
    from_query = tf.matmul(query, w_query + w_difference)  # [B, N, h]
    from_key = tf.matmul(keys, w_key - w_difference)  # [B, L, h]
    products = query[:, :, tf.newaxis, :] * keys[:, tf.newaxis]  # [B, N, L, D]
    hidden = (
        tf.reshape(
            tf.matmul(tf.reshape(products, [-1, width]), w_product),
            tf.concat([tf.shape(products)[:-1], [-1]], 0),
        )
        + from_query[:, :, tf.newaxis]
        + from_key[:, tf.newaxis]
        + first.bias
    )
    hidden = first.activation(hidden)
    for dense in hidden_layers[1:]:
      hidden = dense(hidden)
    return hidden[..., 0]

  def _check(self, query, keys, mask, query_rank, keys_rank):
    input_checks.check_bool_mask(mask)
    if (query.shape.rank != query_rank or keys.shape.rank != keys_rank
        or mask.shape.rank != keys_rank - 1):
      raise ValueError(
          f"expected query of rank {query_rank}, keys of rank {keys_rank} "
          f"and mask of rank {keys_rank - 1}; got {query.shape}, {keys.shape} "
          f"and {mask.shape}."
      )
    input_checks.check_same_width(query, keys)

  def call(self, query, keys, mask):
    query = tf.convert_to_tensor(query)
    keys = tf.convert_to_tensor(keys)
    mask = tf.convert_to_tensor(mask)
    self._check(query, keys, mask, query_rank=2, keys_rank=3)
    scores = self._pair_scores(query[:, tf.newaxis], keys)[:, 0]  # [B, L]
    scores *= tf.cast(mask, scores.dtype)
    return tf.reduce_sum(scores[:, :, tf.newaxis] * keys, axis=1)

  def shared(self, query, keys, mask):
    """N candidates over ONE history (serving's `rank`).

    Args:
      query: float [N, D]; keys: float [T, D]; mask: bool [T].

    Returns:
      float [N, D], row n equal to `call` on (query[n], keys, mask).
    """
    query = tf.convert_to_tensor(query)
    keys = tf.convert_to_tensor(keys)
    mask = tf.convert_to_tensor(mask)
    self._check(query, keys, mask, query_rank=2, keys_rank=2)
    if not self.built:
      self.build(query.shape)
    scores = self._pair_scores(query[tf.newaxis], keys[tf.newaxis])[0]  # [N, T]
    scores *= tf.cast(mask, scores.dtype)[tf.newaxis]
    return tf.matmul(scores, keys)

  def compute_output_shape(self, input_shape):
    return tf.TensorShape(input_shape)

  def get_config(self):
    config = super().get_config()
    config.update({
        "hidden_units": list(self.hidden_units),
        "activation": self.activation,
    })
    return config
