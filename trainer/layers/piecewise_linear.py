"""Piecewise-linear encoding of numeric features by quantile bins.

An MLP reads a count such as "3 same-category behaviours" as one number it
must cut into ranges itself; a GBDT cuts it by thresholds. Encoding each
feature by its position inside quantile bins (Gorishniy et al., "On
Embeddings for Numerical Features in Tabular Deep Learning", NeurIPS 2022)
hands the MLP those thresholds. On the synthetic data, an MLP on eta's
history statistics ALONE scored eval AUC 0.818 raw and 0.821 encoded (3
seeds; a GBDT on them 0.822). Inside eta, beside its other inputs, the gain
was within the seeds' spread (+0.0003 AUC, -0.0014 log loss; README), so
`ModelConfig.statistics_bins` is off by default.

Bin j of feature f, with boundaries b_0 <= ... <= b_n (per feature), is

  e_fj = clip((x_f - b_j) / (b_{j+1} - b_j), 0, 1)   if b_{j+1} > b_j,
  e_fj = 1[x_f >= b_{j+1}]                           if the bin is empty
                                                     (repeated quantiles),

and the output is [x, e] (the raw features kept). The boundaries are
non-trainable weights set by `adapt` from training data (the quantiles of
each feature); until then they are 0, 1/n, ..., 1 for every feature. They
are saved with the model, so serving encodes exactly as training did.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from preprocessing import typed_config


@tf.keras.utils.register_keras_serializable(package="eta")
class PiecewiseLinearEncoding(tf.keras.layers.Layer):
  """[..., F] floats -> [..., F * (1 + num_bins)]: each feature and its bins.

  Args:
    num_bins: bins per feature (n above), >= 1.
    **kwargs: standard Layer arguments.

  Call arguments:
    values: float32 [..., F] (F static).

  Output:
    float32 [..., F * (1 + num_bins)]: the F raw values, then for each
    feature its num_bins bin values in [0, 1].

  Example:
    >>> encoding = PiecewiseLinearEncoding(num_bins=2)
    >>> encoding.adapt(np.array([[0.0], [1.0], [3.0]]))
    >>> encoding(tf.constant([[2.0]])).numpy()  # boundaries 0, 1, 3
    array([[2. , 1. , 0.5]], dtype=float32)
  """

  def __init__(self, num_bins: int = 8, **kwargs):
    super().__init__(**kwargs)
    self.num_bins = typed_config.int_value("num_bins", num_bins, 1)

  def build(self, input_shape):
    width = tf.TensorShape(input_shape)[-1]
    if width is None:
      raise ValueError(f"the feature dimension must be static, got {input_shape}.")
    self.width = int(width)
    self.boundaries = self.add_weight(
        name="boundaries", shape=[self.width, self.num_bins + 1], trainable=False,
        initializer=tf.keras.initializers.Constant(
            np.tile(np.linspace(0.0, 1.0, self.num_bins + 1), [self.width, 1])
        ),
    )
    super().build(input_shape)

  def adapt(self, values: np.ndarray) -> None:
    """Sets each feature's boundaries to its quantiles over `values` [n, F]."""
    values = np.asarray(values, np.float64)
    if values.ndim != 2 or values.shape[0] == 0:
      raise ValueError(f"adapt needs a non-empty [n, F] array, got shape {values.shape}.")
    if not self.built:
      self.build(values.shape)
    if values.shape[1] != self.width:
      raise ValueError(f"adapt got {values.shape[1]} features, the layer has {self.width}.")
    if not np.all(np.isfinite(values)):
      raise ValueError("adapt got non-finite values.")
    quantiles = np.quantile(values, np.linspace(0.0, 1.0, self.num_bins + 1), axis=0)
    self.boundaries.assign(quantiles.T.astype(np.float32))

  def call(self, values):
    values = tf.convert_to_tensor(values, tf.float32)
    low = self.boundaries[:, :-1]  # [F, n]
    high = self.boundaries[:, 1:]
    span = high - low
    x = values[..., tf.newaxis]  # [..., F, 1]
    ramp = tf.clip_by_value((x - low) / tf.where(span > 0, span, 1.0), 0.0, 1.0)
    step = tf.cast(x >= high, tf.float32)
    bins = tf.where(span > 0, ramp, step)  # [..., F, n]
    flat_shape = tf.concat([tf.shape(values)[:-1], [self.width * self.num_bins]], 0)
    return tf.concat([values, tf.reshape(bins, flat_shape)], axis=-1)

  def compute_output_shape(self, input_shape):
    input_shape = tf.TensorShape(input_shape)
    return input_shape[:-1].concatenate([input_shape[-1] * (1 + self.num_bins)])

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config["num_bins"] = self.num_bins
    return config
