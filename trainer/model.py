"""The ETA model family: one Keras model, its long-sequence branch given by config.

Inputs are the outputs of `preprocessing.transforms.transform_features`
(`item_id`, `category_id` int64 [B]; `hist_item_ids`, `hist_category_ids`,
`hist_time_gap_buckets`, `hist_behavior_types` int64 [B, L], left-padded with
0; `hist_length` int64 [B]). The output of `call` is the click logit, float32
[B]; `tf.sigmoid` of it is the click probability.

Network (ETA, arXiv 2108.04468):
  * `FeatureEmbeddings`: item and category embeddings (slot 0 = padding);
    the candidate's query is [item emb, category emb]; a behaviour's key adds
    time-gap-bucket and behaviour-type embeddings;
  * the long branch over all L behaviours (`trainer.branches`, picked by
    `config.VARIANT_REGISTRY`; din has none), including the target-aware
    history statistics when `long_statistics` is set;
  * the short branch: DIN attention over the last `short_seq_len`
    positions, a static slice thanks to the left padding;
  * the head: [query, short, long, log1p(hist_length)] -> MLP -> logit
    (plus a linear function of the same input with `linear_shortcut`).

The model takes its branch at construction (as TFRS's ranking model takes its
interaction layer): `call` (a batch of examples) and `shared_logits` (one
history, N candidates: serving's `rank`) run the same layers, and neither
branches on the variant name.

End to end (ETA's point): signatures are recomputed from the current
embeddings at every training step; no gradient flows through sign or top-k.
Retrieval and attention run inside `tf.function(jit_compile=True)` when
`ModelConfig.jit_compile` is set. Export turns XLA off first
(`xla_disabled()`), because TF Serving disables XLA JIT by default and would
refuse such a graph, and freezes serving constants (`frozen_for_serving()`:
eta's signature table).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping, Optional

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from preprocessing import features
from preprocessing import transforms
from trainer import branches
from trainer import config as config_lib
from trainer.layers import din_attention

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


def model_input_specs(max_seq_len: int) -> dict[str, tf.TensorSpec]:
  """TensorSpecs of the model's inputs (batch dimension unknown)."""
  specs = {}
  for name in MODEL_INPUTS:
    shape = [None, max_seq_len] if name in transforms.SEQUENCE_OUTPUTS else [None]
    specs[name] = tf.TensorSpec(shape, tf.int64, name=name)
  return specs


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
    c = model_config
    self.feature_embeddings = branches.FeatureEmbeddings(
        embedding_dim=c.embedding_dim, side_embedding_dim=c.side_embedding_dim,
        init_stddev=c.embedding_init_stddev, use_item_ids=c.use_item_ids,
        retrieval_embedding=c.retrieval_embedding,
        attention_embedding_dim=c.attention_embedding_dim if c.decoupled_attention else None,
        name="feature_embeddings",
    )
    self.long_branch = branches.build_branch(c, self.feature_embeddings)
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
    self.shortcut_layer = (
        tf.keras.layers.Dense(1, use_bias=False, name="linear_shortcut")
        if c.linear_shortcut else None
    )
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
    if self.long_branch is None:
      yield
      return
    with self.long_branch.xla_disabled():
      yield

  @contextlib.contextmanager
  def frozen_for_serving(self) -> Iterator[None]:
    """Within the block, the branch reads serving constants (eta: the
    signature table of the current weights), which functions traced there
    capture; on exit training behaviour returns."""
    if self.long_branch is None:
      yield
      return
    self.long_branch.freeze()
    try:
      yield
    finally:
      self.long_branch.unfreeze()

  # --- pieces shared by both paths ------------------------------------------

  def candidates(self, item: tf.Tensor, category: tf.Tensor) -> dict[str, tf.Tensor]:
    """Candidate slots [N] -> the branches' candidate dict."""
    return {
        features.ITEM_ID.name: item,
        features.CATEGORY_ID.name: category,
        branches.QUERY: self.feature_embeddings.query(item, category),
    }

  def head(self, parts: list[tf.Tensor], hist_length: tf.Tensor,
           training: bool = False) -> tf.Tensor:
    """[parts..., log1p(hist_length)] -> MLP -> logits [B]."""
    parts = parts + [tf.math.log1p(tf.cast(hist_length, tf.float32))[:, tf.newaxis]]
    inputs = hidden = tf.concat(parts, axis=-1)
    for layer in self.mlp_layers:
      hidden = layer(hidden, training=training)
    logit = self.logit_layer(hidden)
    if self.shortcut_layer is not None:
      logit += self.shortcut_layer(inputs)
    return tf.squeeze(logit, axis=-1)

  # --- the two paths --------------------------------------------------------

  def _batch_pieces(self, inputs: Mapping[str, tf.Tensor]):
    """Batch inputs -> (item [B], category [B], history, mask [B, L], hist_length [B])."""
    item_id = tf.reshape(inputs[features.ITEM_ID.name], [-1])
    category_id = tf.reshape(inputs[features.CATEGORY_ID.name], [-1])
    hist_length = tf.reshape(inputs[transforms.HIST_LENGTH], [-1])
    history = {name: inputs[name] for name in transforms.SEQUENCE_OUTPUTS}
    mask = valid_mask(hist_length, self.model_config.max_seq_len)
    return item_id, category_id, history, mask, hist_length

  def call(self, inputs: Mapping[str, tf.Tensor], training: bool = False) -> tf.Tensor:
    c = self.model_config
    item_id, category_id, history, mask, hist_length = self._batch_pieces(inputs)
    candidates = self.candidates(item_id, category_id)
    short = c.short_seq_len
    short_keys = self.feature_embeddings.short_keys(
        {name: values[:, -short:] for name, values in history.items()}
    )
    parts = [
        candidates[branches.QUERY],
        self.short_attention(candidates[branches.QUERY], short_keys, mask[:, -short:]),
    ]
    if self.long_branch is not None:
      parts.append(self.long_branch(candidates, history, mask, training=training))
    return self.head(parts, hist_length, training=training)

  def shared_logits(
      self,
      item: tf.Tensor,
      category: tf.Tensor,
      history: Mapping[str, tf.Tensor],
      mask: tf.Tensor,
      hist_length: tf.Tensor,
  ) -> tf.Tensor:
    """Logits of N candidates for ONE user's history (inference).

    Args:
      item, category: int64 [N] hashed candidate slots.
      history: the sequence features of one history, int64 [T], left-padded
        (T >= `min_history_positions()`; any tail of the padded history that
        holds every real behaviour gives the same result).
      mask: bool [T].
      hist_length: int64 scalar, what the batched features' hist_length is.

    Returns:
      float32 [N], equal to `call` on the N matching examples.
    """
    c = self.model_config
    candidates = self.candidates(item, category)
    short = c.short_seq_len
    short_history = {name: values[-short:] for name, values in history.items()}
    parts = [
        candidates[branches.QUERY],
        self.short_attention.shared(
            candidates[branches.QUERY],
            self.feature_embeddings.short_keys(short_history), mask[-short:],
        ),
    ]
    if self.long_branch is not None:
      parts.append(self.long_branch.shared(candidates, history, mask))
    n = tf.shape(item)[0]
    return self.head(parts, tf.broadcast_to(hist_length, [n]))

  def adapt_statistics(
      self, make_dataset: Callable[[], tf.data.Dataset], max_examples: int = 100_000
  ) -> int:
    """Sets the statistics' quantile bins from (features, label) batches.

    Give it training examples only (never the validation or eval days):
    the bins are part of the model. `make_dataset` is called only when the
    model has a statistics encoding (off by default), so the default path
    builds no input pipeline for it. Reads at most `max_examples` (the
    first ones of the dataset). Returns the examples read (0 when the model
    has no statistics encoding).
    """
    branch = self.long_branch
    if branch is None or branch.statistics_encoding is None:
      return 0
    collected, count = [], 0
    for inputs, _ in make_dataset():
      item_id, category_id, history, mask, _ = self._batch_pieces(inputs)
      slots = {features.ITEM_ID.name: item_id, features.CATEGORY_ID.name: category_id}
      collected.append(branch.raw_statistics(slots, history, mask).numpy())
      count += len(collected[-1])
      if count >= max_examples:
        break
    if not count:
      raise ValueError("adapt_statistics got no examples")
    branch.adapt_statistics(np.concatenate(collected)[:max_examples])
    return min(count, max_examples)

  def history_window(self) -> int:
    """Most recent positions any part of the model reads (din: the short ones)."""
    if self.long_branch is None:
      return self.model_config.short_seq_len
    return self.model_config.max_seq_len

  def min_history_positions(self) -> int:
    """Fewest positions `shared_logits` may be given (top-k needs k)."""
    if self.long_branch is None:
      return self.model_config.short_seq_len
    return max(self.long_branch.min_positions, 1)

  # --- training -------------------------------------------------------------

  def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
    """(features, labels) -> mean log loss over the GLOBAL batch (+ penalty)."""
    model_inputs, labels = inputs
    logits = self(model_inputs, training=training)
    labels = tf.cast(tf.reshape(labels, [-1, 1]), tf.float32)
    loss_sum = self.task(labels=labels, predictions=logits[:, tf.newaxis], training=training)
    batch = tf.cast(tf.shape(labels)[0], tf.float32)
    if training and self.model_config.embedding_l2 > 0:
      loss_sum += self.model_config.embedding_l2 * self.embedding_penalty(model_inputs) * batch
    # Replicas' gradients are summed, so each divides by the global batch.
    replicas = tf.distribute.get_strategy().num_replicas_in_sync
    return loss_sum / (batch * replicas)

  def embedding_penalty(self, inputs: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """Mean squared entry of the item and category rows the batch uses.

    DIN's mini-batch aware regularisation: each distinct row counts once per
    batch, so rare ids are not shrunk more than they are trained. Padding
    (slot 0) is excluded. A mean, not a sum, so that the weight reads on the
    scale of the (mean) log loss whatever the batch and the dimension.
    """
    squares, entries = tf.constant(0.0), tf.constant(0.0)
    names = {
        features.ITEM_ID.buckets: (features.ITEM_ID.name, features.HIST_ITEM_IDS.name),
        features.CATEGORY_ID.buckets: (features.CATEGORY_ID.name,
                                       features.HIST_CATEGORY_IDS.name),
    }
    for table in self.feature_embeddings.id_tables():
      ids = tf.concat([tf.reshape(inputs[n], [-1]) for n in names[table.input_dim]], 0)
      rows = branches.rows_in_use(ids, table.input_dim)
      used = table(tf.boolean_mask(rows, rows > 0))
      squares += tf.reduce_sum(tf.square(used))
      entries += tf.cast(tf.size(used), tf.float32)
    return tf.math.divide_no_nan(squares, entries)

  def get_config(self) -> dict[str, Any]:
    return {"model_config": self.model_config.to_dict()}

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> "EtaModel":
    return cls(config_lib.ModelConfig.from_dict(config["model_config"]))


def valid_mask(hist_length: tf.Tensor, max_seq_len: int) -> tf.Tensor:
  """Left-padded layout: position p of [0, L) is real iff p >= L - hist_length."""
  positions = tf.range(max_seq_len, dtype=tf.int64)[tf.newaxis, :]
  return positions >= max_seq_len - tf.cast(hist_length, tf.int64)[:, tf.newaxis]


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
