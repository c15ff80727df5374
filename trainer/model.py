"""The ETA model family: one Keras model, the long-sequence branch chosen by config.

Inputs are the outputs of `preprocessing.transforms.transform_features`
(`item_id`, `category_id` int64 [B]; `hist_item_ids`, `hist_category_ids`,
`hist_time_gap_buckets`, `hist_behavior_types` int64 [B, L], left-padded with
0; `hist_length` int64 [B]). The output of `call` is the click logit, float32
[B]; `tf.sigmoid` of it is the click probability.

Network (ETA, arXiv 2108.04468):
  * shared item and category embeddings (slot 0 = padding); the candidate's
    query is [item emb, category emb]; a behaviour's key is [item emb,
    category emb, time-gap-bucket emb, behaviour-type emb];
  * the long branch over all L behaviours, by `ModelConfig.model`:
      - `eta`: SimHash signatures of the candidate's and of the behaviours'
        item embeddings -> Hamming top-k -> multi-head target attention over
        the k retrieved behaviours;
      - `exact_topk`: top-k by the exact dot product of item embeddings, then
        the same attention;
      - `full_attention`: multi-head target attention over all L;
      - `sim_hard`: the k most recent behaviours of the candidate's category,
        then the same attention;
      - `sdim`: SDIM hash-bucket aggregation (m = 48, tau = 3 by default);
      - `avgpool`: masked mean of all L behaviour keys;
      - `din`: none (short branch only);
  * the short branch: DIN attention over the last `short_seq_len` positions,
    a static slice thanks to the left padding;
  * [query, short, long, log1p(hist_length)] -> MLP -> logit.

End to end (ETA's point): signatures are recomputed from the current item
embeddings at every step; no gradient flows through sign or top-k, the
embeddings learn through the attention over what was retrieved. Signatures
are computed once per distinct item id of the batch (a presence count over
the item table), not per history position, which makes hashing cheap next to
the attention.

Retrieval and attention run inside `tf.function(jit_compile=True)` when
`ModelConfig.jit_compile` is set (static shapes: L and k are fixed). Export
turns XLA off first (`xla_disabled()`), because TF Serving disables XLA JIT
by default and would refuse such a graph.

`run_fn` (TFX Trainer entry point, referred to by dotted path) is at the end.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping

import tensorflow as tf
import tensorflow_recommenders as tfrs

from preprocessing import features
from preprocessing import transforms
from trainer import config as config_lib
from trainer.layers import din_attention
from trainer.layers import retrieval
from trainer.layers import sdim
from trainer.layers import simhash
from trainer.layers import target_attention

# The transformed features the model reads (others, e.g. user_id, are ignored).
MODEL_INPUTS: tuple[str, ...] = (
    features.ITEM_ID.name,
    features.CATEGORY_ID.name,
    features.HIST_ITEM_IDS.name,
    features.HIST_CATEGORY_IDS.name,
    transforms.HIST_TIME_GAP_BUCKETS,
    features.HIST_BEHAVIOR_TYPES.name,
    transforms.HIST_LENGTH,
)
# Variants whose long branch is target attention (over k or over all L).
_ATTENTION_VARIANTS = ("eta", "exact_topk", "full_attention", "sim_hard")


def model_input_specs(max_seq_len: int) -> dict[str, tf.TensorSpec]:
  """TensorSpecs of the model's inputs (batch dimension unknown)."""
  specs = {}
  for name in MODEL_INPUTS:
    shape = [None, max_seq_len] if name in transforms.SEQUENCE_OUTPUTS else [None]
    specs[name] = tf.TensorSpec(shape, tf.int64, name=name)
  return specs


class _CompiledFunctions:
  """Holds the XLA-compiled helpers outside Keras' object tracking.

  A tf.function stored as a tracked attribute would be exported into the
  SavedModel with its XLA attribute; a plain object is invisible to it.
  """

  def __init__(self):
    self.functions: dict[str, Callable[..., Any]] = {}

  def get(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    if name not in self.functions:
      self.functions[name] = tf.function(function, jit_compile=True)
    return self.functions[name]


@tf.keras.utils.register_keras_serializable(package="eta")
class EtaModel(tfrs.models.Model):
  """The CTR model family (see the module docstring).

  Args:
    model_config: a `ModelConfig` (or its dict form).

  Input: dict of int64 tensors named by `MODEL_INPUTS` (scalars [B] or
    [B, 1], sequences [B, max_seq_len], left-padded).
  Output: float32 [B] click logits.
  """

  def __init__(self, model_config: config_lib.ModelConfig | Mapping[str, Any], **kwargs):
    super().__init__(**kwargs)
    if not isinstance(model_config, config_lib.ModelConfig):
      model_config = config_lib.ModelConfig.from_dict(model_config)
    self.model_config = model_config
    self._compiled = _CompiledFunctions()
    self._xla_enabled = model_config.jit_compile
    c = model_config

    def embedding(rows: int, dim: int, name: str) -> tf.keras.layers.Embedding:
      return tf.keras.layers.Embedding(
          rows, dim, name=name,
          embeddings_initializer=tf.keras.initializers.RandomNormal(
              stddev=c.embedding_init_stddev
          ),
      )

    self.item_embedding = embedding(
        features.ITEM_ID.buckets, c.embedding_dim, "item_embedding"
    )
    self.category_embedding = embedding(
        features.CATEGORY_ID.buckets, c.embedding_dim, "category_embedding"
    )
    self.time_gap_embedding = embedding(
        features.TIME_GAP_BUCKETS, c.side_embedding_dim, "time_gap_embedding"
    )
    self.behavior_type_embedding = embedding(
        len(features.BEHAVIOR_TYPES) + 1, c.side_embedding_dim,
        "behavior_type_embedding",
    )
    if c.model == "eta":
      self.simhash = simhash.SimHash(num_bits=c.num_bits, seed=c.seed, name="simhash")
      self.hamming_top_k = retrieval.HammingTopK(k=c.top_k, name="hamming_top_k")
    if c.model in _ATTENTION_VARIANTS:
      self.long_attention = target_attention.MultiHeadTargetAttention(
          num_heads=c.num_heads, head_dim=c.head_dim, dropout=c.dropout,
          name="long_attention",
      )
    if c.model == "sdim":
      self.sdim_aggregation = sdim.SdimAggregation(
          num_bits=c.sdim_num_bits, tau=c.sdim_tau, seed=c.seed,
          name="sdim_aggregation",
      )
    self.short_attention = din_attention.DinAttention(
        hidden_units=c.din_hidden_units, name="short_attention"
    )
    self.mlp_layers = []
    for i, units in enumerate(c.mlp_units):
      self.mlp_layers.append(
          tf.keras.layers.Dense(units, activation="relu", name=f"mlp_{i}")
      )
      if c.dropout > 0:
        self.mlp_layers.append(tf.keras.layers.Dropout(c.dropout, seed=c.seed + i))
    self.logit_layer = tf.keras.layers.Dense(1, name="logit")
    self.task = tfrs.tasks.Ranking(
        loss=tf.keras.losses.BinaryCrossentropy(
            from_logits=True, reduction=tf.keras.losses.Reduction.SUM
        ),
        metrics=[tf.keras.metrics.AUC(from_logits=True, name="auc")],
    )

  # --- switches -----------------------------------------------------------

  @contextlib.contextmanager
  def xla_disabled(self) -> Iterator[None]:
    """Within the block, functions traced call no XLA (export, build).

    Takes effect for functions traced inside the block; a function traced
    before keeps what it was traced with.
    """
    enabled = self._xla_enabled
    self._xla_enabled = False
    try:
      yield
    finally:
      self._xla_enabled = enabled

  def _maybe_compiled(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    if self._xla_enabled:
      return self._compiled.get(name, function)
    return function

  # --- pieces -------------------------------------------------------------

  def candidate_representation(self, item_id: tf.Tensor, category_id: tf.Tensor):
    """Candidate ids [B] -> (item embedding [B, d], query [B, 2d])."""
    item = self.item_embedding(item_id)
    query = tf.concat([item, self.category_embedding(category_id)], axis=-1)
    return item, query

  def behaviour_keys(self, history: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """History id tensors [..., n] -> keys [..., n, 2d + 2 * side_dim]."""
    return tf.concat(
        [
            self.item_embedding(history[features.HIST_ITEM_IDS.name]),
            self.category_embedding(history[features.HIST_CATEGORY_IDS.name]),
            self.time_gap_embedding(history[transforms.HIST_TIME_GAP_BUCKETS]),
            self.behavior_type_embedding(history[features.HIST_BEHAVIOR_TYPES.name]),
        ],
        axis=-1,
    )

  def item_signatures(self, item_ids: tf.Tensor) -> tf.Tensor:
    """SimHash signatures of item slots, hashing each distinct slot once.

    The slots in use are found with a presence count over the item table
    (bincount), hashed, scattered into a [buckets, W] table and gathered
    back: linear in the number of ids and in the table size. (tf.unique
    gives the same result but its hash table slows down past ~10^6 ids:
    166 ms vs 44 ms at B=256, L=4096 on 2 cores.)

    Args:
      item_ids: int64 [...] item slots in [0, ITEM_ID.buckets).

    Returns:
      int64 [..., num_words] packed signatures of the CURRENT item embeddings
      (no gradient).
    """
    rows = _rows_in_use(item_ids, self.item_embedding.input_dim)
    signatures = self.simhash(tf.stop_gradient(self.item_embedding(rows)))
    table = tf.scatter_nd(
        rows[:, tf.newaxis], signatures,
        [self.item_embedding.input_dim, self.simhash.num_words],
    )
    return tf.gather(table, item_ids)

  def item_category_signatures(self, item_ids: tf.Tensor, category_ids: tf.Tensor) -> tf.Tensor:
    """SDIM signatures of [item emb, category emb], each distinct pair hashed once.

    Args:
      item_ids, category_ids: int64 [...] slots (same shape).

    Returns:
      int64 [..., num_words] packed signatures (no gradient).
    """
    buckets = features.CATEGORY_ID.buckets
    pairs = tf.reshape(item_ids, [-1]) * buckets + tf.reshape(category_ids, [-1])
    unique_pairs, position = tf.unique(pairs)
    rows = tf.stop_gradient(
        tf.concat(
            [
                self.item_embedding(unique_pairs // buckets),
                self.category_embedding(unique_pairs % buckets),
            ],
            axis=-1,
        )
    )
    hasher = self.sdim_aggregation.simhash
    signatures = tf.gather(hasher(rows), position)
    return tf.reshape(
        signatures, tf.concat([tf.shape(item_ids), [hasher.num_words]], axis=0)
    )

  def signature_table(self) -> tf.Tensor:
    """int64 [item buckets, num_words]: the signature of every item slot (eta)."""
    return self.simhash(self.item_embedding.embeddings)

  def _attend(self, query, keys, mask, training) -> tf.Tensor:
    def attend(query, keys, mask):
      return self.long_attention(query, keys, mask, training=training)

    return self._maybe_compiled(f"attend_{bool(training)}", attend)(query, keys, mask)

  def _attend_selected(self, query, history, indices, valid, training) -> tf.Tensor:
    """Target attention over the behaviours at `indices` [B, k] (valid [B, k])."""
    selected = {
        name: tf.gather(history[name], indices, batch_dims=1)
        for name in transforms.SEQUENCE_OUTPUTS
    }
    return self._attend(query, self.behaviour_keys(selected), valid, training)

  def long_interest_from_signatures(
      self,
      query: tf.Tensor,
      candidate_signatures: tf.Tensor,
      history: Mapping[str, tf.Tensor],
      history_signatures: tf.Tensor,
      mask: tf.Tensor,
      training: bool = False,
  ) -> tf.Tensor:
    """ETA's long branch given signatures (serving passes precomputed ones).

    Args:
      query: float [B, 2d] candidate queries.
      candidate_signatures: int64 [B, W].
      history: the four history id tensors, int64 [B, L].
      history_signatures: int64 [B, L, W].
      mask: bool [B, L], True at real behaviours.
      training: Keras training flag.

    Returns:
      float32 [B, num_heads * head_dim].
    """
    indices, valid = self._maybe_compiled("hamming_top_k", self.hamming_top_k)(
        candidate_signatures, history_signatures, mask
    )
    return self._attend_selected(query, history, indices, valid, training)

  def short_interest(self, query, history, mask) -> tf.Tensor:
    """DIN attention over the last short_seq_len positions -> [B, 2d].

    The left padding makes the most recent behaviours a static slice.
    """
    short = self.model_config.short_seq_len
    keys = tf.concat(
        [
            self.item_embedding(history[features.HIST_ITEM_IDS.name][:, -short:]),
            self.category_embedding(history[features.HIST_CATEGORY_IDS.name][:, -short:]),
        ],
        axis=-1,
    )
    return self.short_attention(query, keys, mask[:, -short:])

  def long_interest(self, inputs, candidate_item, query, history, mask, training):
    """The variant's long-sequence branch; None for `din`."""
    variant = self.model_config.model
    k = self.model_config.top_k
    if variant == "eta":
      both = tf.concat(
          [inputs[features.ITEM_ID.name][:, tf.newaxis], history[features.HIST_ITEM_IDS.name]],
          axis=1,
      )
      signatures = self.item_signatures(both)
      return self.long_interest_from_signatures(
          query, signatures[:, 0], history, signatures[:, 1:], mask, training
      )
    if variant == "exact_topk":
      behaviours = self.item_embedding(history[features.HIST_ITEM_IDS.name])

      def exact_top_k(candidate, behaviours, mask):
        scores = tf.einsum("bd,bld->bl", candidate, behaviours)
        scores = tf.where(mask, scores, tf.float32.min)
        indices = tf.math.top_k(scores, k=k).indices
        return indices, tf.gather(mask, indices, batch_dims=1)

      indices, valid = self._maybe_compiled("exact_top_k", exact_top_k)(
          tf.stop_gradient(candidate_item), tf.stop_gradient(behaviours), mask
      )
      return self._attend_selected(query, history, indices, valid, training)
    if variant == "sim_hard":
      indices, valid = self._maybe_compiled("same_category_recent", same_category_recent)(
          inputs[features.CATEGORY_ID.name], history[features.HIST_CATEGORY_IDS.name],
          mask, k,
      )
      return self._attend_selected(query, history, indices, valid, training)
    if variant == "full_attention":
      return self._attend(query, self.behaviour_keys(history), mask, training)
    if variant == "avgpool":
      keys = self.behaviour_keys(history)
      weights = tf.cast(mask, keys.dtype)[..., tf.newaxis]
      count = tf.maximum(tf.reduce_sum(weights, axis=1), 1.0)
      return tf.reduce_sum(keys * weights, axis=1) / count
    if variant == "sdim":
      behaviours = tf.concat(
          [
              self.item_embedding(history[features.HIST_ITEM_IDS.name]),
              self.category_embedding(history[features.HIST_CATEGORY_IDS.name]),
          ],
          axis=-1,
      )
      item_ids = tf.concat(
          [inputs[features.ITEM_ID.name][:, tf.newaxis], history[features.HIST_ITEM_IDS.name]],
          axis=1,
      )
      category_ids = tf.concat(
          [inputs[features.CATEGORY_ID.name][:, tf.newaxis],
           history[features.HIST_CATEGORY_IDS.name]],
          axis=1,
      )
      signatures = self.item_category_signatures(item_ids, category_ids)

      def aggregate(query, behaviours, mask, query_signatures, key_signatures):
        return self.sdim_aggregation(
            query, behaviours, mask, query_signatures=query_signatures,
            key_signatures=key_signatures,
        )

      return self._maybe_compiled("sdim", aggregate)(
          query, behaviours, mask, signatures[:, 0], signatures[:, 1:]
      )
    return None

  # --- Keras --------------------------------------------------------------

  def call(self, inputs: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
    c = self.model_config
    item_id = tf.reshape(inputs[features.ITEM_ID.name], [-1])
    category_id = tf.reshape(inputs[features.CATEGORY_ID.name], [-1])
    hist_length = tf.reshape(inputs[transforms.HIST_LENGTH], [-1])
    scalars = {features.ITEM_ID.name: item_id, features.CATEGORY_ID.name: category_id}
    history = {name: inputs[name] for name in transforms.SEQUENCE_OUTPUTS}
    mask = valid_mask(hist_length, c.max_seq_len)
    candidate_item, query = self.candidate_representation(item_id, category_id)

    parts = [query, self.short_interest(query, history, mask)]
    long = self.long_interest(scalars, candidate_item, query, history, mask, training)
    if long is not None:
      parts.append(long)
    parts.append(tf.math.log1p(tf.cast(hist_length, tf.float32))[:, tf.newaxis])
    hidden = tf.concat(parts, axis=-1)
    for layer in self.mlp_layers:
      hidden = layer(hidden, training=training)
    return tf.squeeze(self.logit_layer(hidden), axis=-1)

  def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
    """(features, labels) -> mean log loss over the GLOBAL batch."""
    model_inputs, labels = inputs
    logits = self(model_inputs, training=training)
    labels = tf.cast(tf.reshape(labels, [-1, 1]), tf.float32)
    loss_sum = self.task(labels=labels, predictions=logits[:, tf.newaxis], training=training)
    if training and self.model_config.embedding_l2 > 0:
      loss_sum += self.model_config.embedding_l2 * self.embedding_penalty(model_inputs)
    # Replicas' gradients are summed, so each divides by the global batch.
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    global_batch = tf.cast(tf.shape(labels)[0] * replicas, tf.float32)
    return loss_sum / global_batch

  def embedding_penalty(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """Sum of squared norms of the item and category rows the batch uses.

    DIN's mini-batch aware regularisation: each distinct row counts once per
    batch, so rare ids are not shrunk more than they are trained. Padding
    (slot 0) is excluded.
    """
    penalty = tf.constant(0.0)
    for table, names in (
        (self.item_embedding, (features.ITEM_ID.name, features.HIST_ITEM_IDS.name)),
        (self.category_embedding, (features.CATEGORY_ID.name, features.HIST_CATEGORY_IDS.name)),
    ):
      ids = tf.concat([tf.reshape(inputs[name], [-1]) for name in names], axis=0)
      rows = _rows_in_use(ids, table.input_dim)
      penalty += tf.reduce_sum(tf.square(table(tf.boolean_mask(rows, rows > 0))))
    return penalty

  def get_config(self) -> dict[str, Any]:
    return {"model_config": self.model_config.to_dict()}

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> "EtaModel":
    return cls(config_lib.ModelConfig.from_dict(config["model_config"]))


def _rows_in_use(ids: tf.Tensor, rows: int) -> tf.Tensor:
  """int64 [n] sorted distinct values of `ids` (slots in [0, rows))."""
  present = tf.math.bincount(
      tf.cast(tf.reshape(ids, [-1]), tf.int32), minlength=rows, maxlength=rows
  )
  return tf.where(present > 0)[:, 0]


def valid_mask(hist_length: tf.Tensor, max_seq_len: int) -> tf.Tensor:
  """Left-padded layout: position p of [0, L) is real iff p >= L - hist_length."""
  positions = tf.range(max_seq_len, dtype=tf.int64)[tf.newaxis, :]
  return positions >= max_seq_len - tf.cast(hist_length, tf.int64)[:, tf.newaxis]


def same_category_recent(category_id, hist_category_ids, mask, k: int):
  """SIM (hard): the k most recent valid behaviours of the candidate's category.

  Args:
    category_id: int64 [B] candidate category slots.
    hist_category_ids: int64 [B, L] (left-padded, most recent last).
    mask: bool [B, L] real behaviours.
    k: how many to keep.

  Returns:
    (indices int32 [B, k], valid bool [B, k]): positions, most recent first;
    slots beyond the user's matching count are invalid.
  """
  match = mask & tf.equal(hist_category_ids, category_id[:, tf.newaxis])
  length = tf.shape(hist_category_ids)[1]
  positions = tf.cast(tf.range(length), tf.float32)[tf.newaxis, :]
  recency = tf.where(match, positions, -1.0)
  indices = tf.math.top_k(recency, k=k).indices
  return indices, tf.gather(match, indices, batch_dims=1)


def build_model(model_config: config_lib.ModelConfig) -> EtaModel:
  """Creates the model and its variables (one eager call on an empty batch).

  Seeds Keras' global RNG with `model_config.seed` so weight initialisation
  is reproducible.
  """
  tf.keras.utils.set_random_seed(model_config.seed)
  model = EtaModel(model_config, name=f"{model_config.model}_model")
  # Variables are created outside XLA, in this first (eager) call.
  with model.xla_disabled():
    model(dummy_inputs(model_config.max_seq_len))
  return model


def dummy_inputs(max_seq_len: int, batch_size: int = 2) -> dict[str, tf.Tensor]:
  """A batch of users without history (used to create variables)."""
  return {
      name: tf.zeros([batch_size] + spec.shape.as_list()[1:], tf.int64)
      for name, spec in model_input_specs(max_seq_len).items()
  }


def run_fn(fn_args: Any) -> None:
  """TFX Trainer entry point (`Trainer(run_fn="trainer.model.run_fn")`).

  Args:
    fn_args: tfx.components.FnArgs: train/eval files, data_accessor,
      transform_output, serving_model_dir, model_run_dir, base_model,
      train_steps, eval_steps, custom_config (flat ModelConfig/TrainConfig
      fields; unknown keys are refused).
  """
  from trainer import tfx_trainer  # pylint: disable=g-import-not-at-top

  tfx_trainer.run(fn_args)
