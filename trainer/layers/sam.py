"""SAM (Lin et al., CIKM 2022, arXiv 2208.04022): Sparse Attentive Memory.

The candidate is the query and the long history is a memory. Each of T
passes scores every behaviour point-wise with a small MLP over
[t - e; t * e; m - e; m * e] (t the candidate, e the behaviour, m the memory
vector), turns the score into an independent sigmoid weight (padding weighted
exactly 0, no normalisation over positions), reads r = sum_l a_l v_l, and
updates the memory with a GRU cell whose weights all passes share. In 'iter'
mode (the paper's description) the updated memory is the next pass's second
query; 'stk' mode reproduces the released code, whose misspelt variable keeps
the second query equal to t in every pass (../shared/docs/sam.md). Each pass
also projects its length-L weight vector with its own position-wise Dense
(p_i); the output is BatchNorm([p_1; m_1; ...; p_T; m_T]).

Cost: the scorer's first layer is applied as e_l . K + c with
K = diag(t) W_b + diag(m) W_d - W_a - W_c (W = [W_a; W_b; W_c; W_d]), so no
[B, L, 4d] feature tensor is built: O(T * L * d * scorer_units) operations
and [B, L, scorer_units] activations per pass.
"""

from __future__ import annotations

from typing import Any, Optional

import tensorflow as tf

from preprocessing import typed_config
from trainer.layers import input_checks

MODES: tuple[str, ...] = ("iter", "stk")


@tf.keras.utils.register_keras_serializable(package="eta")
class SparseAttentiveMemory(tf.keras.layers.Layer):
  """SAM's T passes of point-wise dual-query attention with a GRU memory.

  Args:
    sequence_length: L, the longest history; the per-pass position
      projections have L rows. Histories are left-padded (most recent last),
      so a shorter history [L'] uses the projections' last L' rows.
    num_passes: T >= 1 memory passes.
    scorer_units: hidden width of each pass's scorer MLP (paper: 8).
    projection_units: width of each pass's projection of its weight vector
      (paper: 16).
    mode: "iter" (the memory is the second query) or "stk" (the second query
      stays the candidate, as in the released code).
    value_dim: dv, the width of `values`; None: values are d wide (e.g.
      the keys themselves).
    **kwargs: standard Layer arguments.

  Call arguments:
    query: float [B, d], the candidate in the scorer's space.
    keys: float [B, L', d] (L' <= sequence_length), the behaviours in the
      same space: what the scorer compares with the query and the memory.
    values: float [B, L', dv], what the passes read (may be `keys`).
    mask: bool [B, L'], True at real behaviours.
    training: Keras flag (BatchNorm).

  `shared(query [N, d], keys [L', d], values [L', dv], mask [L'])`: the N
  candidates over ONE history, equal to `call` on N copies of it.

  Output shape:
    float32 [B, num_passes * (projection_units + d)].

  Example:
    >>> sam = SparseAttentiveMemory(sequence_length=100, num_passes=2, value_dim=24)
    >>> sam(tf.ones([3, 8]), tf.ones([3, 100, 8]), tf.ones([3, 100, 24]),
    ...     tf.ones([3, 100], tf.bool)).shape
    TensorShape([3, 48])
  """

  def __init__(
      self,
      sequence_length: int,
      num_passes: int = 2,
      scorer_units: int = 8,
      projection_units: int = 16,
      mode: str = "iter",
      value_dim: Optional[int] = None,
      **kwargs,
  ):
    super().__init__(**kwargs)
    for name, value in (("sequence_length", sequence_length), ("num_passes", num_passes),
                        ("scorer_units", scorer_units),
                        ("projection_units", projection_units)):
      typed_config.int_value(name, value, 1)
    if mode not in MODES:
      raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    if value_dim is not None:
      typed_config.int_value("value_dim", value_dim, 1)
    self.sequence_length = sequence_length
    self.num_passes = num_passes
    self.scorer_units = scorer_units
    self.projection_units = projection_units
    self.mode = mode
    self.value_dim = value_dim

  def build(self, input_shape):
    query_shape = tf.TensorShape(input_shape)
    if query_shape.rank != 2 or query_shape[-1] is None:
      raise ValueError(f"query must be [B, d] with a static d, got {query_shape}.")
    self.query_dim = int(query_shape[-1])
    d, t, h = self.query_dim, self.num_passes, self.scorer_units
    dv = self.value_dim or d

    def weight(name, shape, fan_in=None, fan_out=None):
      # Glorot-uniform per pass: the stacked [T, ...] shape would skew
      # Keras' fan computation.
      if fan_in is None:
        initializer = "zeros"
      else:
        limit = (6.0 / (fan_in + fan_out)) ** 0.5
        initializer = tf.keras.initializers.RandomUniform(-limit, limit)
      return self.add_weight(name=name, shape=shape, initializer=initializer)

    self.scorer_hidden_kernel = weight("scorer_hidden_kernel", [t, 4 * d, h], 4 * d, h)
    self.scorer_hidden_bias = weight("scorer_hidden_bias", [t, h])
    self.scorer_output_kernel = weight("scorer_output_kernel", [t, h], h, 1)
    self.scorer_output_bias = weight("scorer_output_bias", [t])
    length, units = self.sequence_length, self.projection_units
    self.position_kernel = weight("position_kernel", [t, length, units], length, units)
    self.position_bias = weight("position_bias", [t, units])
    # One GRU cell shared by every pass (TF1 GRUCell form, gate bias 1.0):
    # input r (width dv), state m (width d).
    self.gate_kernel = weight("gru_gate_kernel", [dv + d, 2 * d], dv + d, 2 * d)
    self.gate_bias = self.add_weight(name="gru_gate_bias", shape=[2 * d],
                                     initializer=tf.keras.initializers.Constant(1.0))
    self.candidate_kernel = weight("gru_candidate_kernel", [dv + d, d], dv + d, d)
    self.candidate_bias = weight("gru_candidate_bias", [d])
    self.output_norm = tf.keras.layers.BatchNormalization(name="output_norm")
    self.output_norm.build([None, self.output_width])
    super().build(input_shape)

  @property
  def output_width(self) -> int:
    return self.num_passes * (self.projection_units + self.query_dim)

  def _check(self, query, keys, values, mask, shared: bool) -> None:
    rank = 2 if shared else 3
    if keys.shape.rank != rank or values.shape.rank != rank or mask.shape.rank != rank - 1:
      raise ValueError(
          f"keys and values must be rank {rank} and mask rank {rank - 1}; got "
          f"{keys.shape}, {values.shape}, {mask.shape}."
      )
    input_checks.check_bool_mask(mask)
    if values.shape[-1] != (self.value_dim or self.query_dim):
      raise ValueError(
          f"values width {values.shape[-1]} must be value_dim "
          f"{self.value_dim or self.query_dim}."
      )
    input_checks.check_same_width(query, keys)
    length = keys.shape[-2]
    if length is not None and length > self.sequence_length:
      raise ValueError(
          f"history length {length} exceeds sequence_length {self.sequence_length}."
      )

  def _gru(self, inputs: tf.Tensor, state: tf.Tensor) -> tf.Tensor:
    gates = tf.sigmoid(tf.matmul(tf.concat([inputs, state], -1), self.gate_kernel)
                       + self.gate_bias)
    reset, update = tf.split(gates, 2, axis=-1)
    candidate = tf.tanh(
        tf.matmul(tf.concat([inputs, reset * state], -1), self.candidate_kernel)
        + self.candidate_bias
    )
    return update * state + (1.0 - update) * candidate

  def _passes(self, query, keys, values, mask, shared: bool) -> tf.Tensor:
    """[p_1; m_1; ...] before the BatchNorm; keys [B, L', d] or shared [L', d]."""
    length = tf.shape(keys)[-2]
    weight_mask = tf.cast(mask, query.dtype)
    scores_eq, read_eq, project_eq = (
        ("ld,ndh->nlh", "nl,lv->nv", "nl,lp->np") if shared
        else ("bld,bdh->blh", "bl,blv->bv", "bl,lp->bp")
    )
    memory = query
    outputs = []
    for i in range(self.num_passes):
      second_query = memory if self.mode == "iter" else query
      w_a, w_b, w_c, w_d = tf.split(self.scorer_hidden_kernel[i], 4, axis=0)
      # z_l . W = c + e_l . K (see the module docstring).
      kernel = (query[:, :, tf.newaxis] * w_b + second_query[:, :, tf.newaxis] * w_d
                - (w_a + w_c))
      offset = (tf.matmul(query, w_a) + tf.matmul(second_query, w_c)
                + self.scorer_hidden_bias[i])
      hidden = tf.sigmoid(tf.einsum(scores_eq, keys, kernel) + offset[:, tf.newaxis])
      scores = tf.tensordot(hidden, self.scorer_output_kernel[i], 1) + self.scorer_output_bias[i]
      # Independent sigmoid weights; padding gets exactly 0.
      weights = tf.sigmoid(scores) * weight_mask
      read = tf.einsum(read_eq, weights, values)
      memory = self._gru(read, memory)
      # Left padding: the last L' rows are the positions of a length-L' tail.
      positions = self.position_kernel[i][self.sequence_length - length:]
      projected = tf.nn.relu(tf.einsum(project_eq, weights, positions) + self.position_bias[i])
      outputs += [projected, memory]
    return tf.concat(outputs, axis=-1)

  def call(self, query, keys, values, mask, training=None):
    query, keys, values, mask = (tf.convert_to_tensor(x) for x in (query, keys, values, mask))
    self._check(query, keys, values, mask, shared=False)
    return self.output_norm(self._passes(query, keys, values, mask, shared=False),
                            training=training)

  def shared(self, query, keys, values, mask):
    """N candidates [N, d] over one history (keys [L', d], values [L', dv],
    mask [L']) -> float32 [N, output width] (inference)."""
    query, keys, values, mask = (tf.convert_to_tensor(x) for x in (query, keys, values, mask))
    if not self.built:
      self.build(query.shape)
    self._check(query, keys, values, mask, shared=True)
    return self.output_norm(self._passes(query, keys, values, mask, shared=True),
                            training=False)

  def compute_output_shape(self, input_shape):
    return tf.TensorShape(input_shape)[:-1].concatenate([self.output_width])

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update({
        "sequence_length": self.sequence_length,
        "num_passes": self.num_passes,
        "scorer_units": self.scorer_units,
        "projection_units": self.projection_units,
        "mode": self.mode,
        "value_dim": self.value_dim,
    })
    return config
