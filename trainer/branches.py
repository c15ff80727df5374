"""The model's feature embeddings and its long-sequence branches.

`FeatureEmbeddings` holds the id and side-feature tables every part of the
model reads. Each long-sequence variant is ONE branch layer (the registry
`config.VARIANT_REGISTRY` names its class) with two paths:

  * `call` (the batch path): each example its own history, candidates [B],
    history [B, L]: training and `serving_default`;
  * `shared` (the shared-history path): ONE history [T] scored against N
    candidates, the history-side work done once: serving's `rank`.

Both paths call the same layers and functions (retrieval, attention, SDIM,
the history statistics); the model, the export and the signatures never
branch on the variant name.

Candidates are a dict: `item_id`, `category_id` (int64 slots) and `query`
(float, `FeatureEmbeddings.query`). Histories are dicts of the transformed
sequence features (`transforms.SEQUENCE_OUTPUTS`), left-padded.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Mapping, Optional

import numpy as np
import tensorflow as tf

from preprocessing import features
from preprocessing import transforms
from preprocessing import typed_config
from trainer import config as config_lib
from trainer.layers import history_statistics
from trainer.layers import piecewise_linear
from trainer.layers import retrieval
from trainer.layers import sam
from trainer.layers import sdim
from trainer.layers import simhash
from trainer.layers import target_attention

QUERY = "query"
_ITEM = features.ITEM_ID.name
_CATEGORY = features.CATEGORY_ID.name
_HIST_ITEMS = features.HIST_ITEM_IDS.name
_HIST_CATEGORIES = features.HIST_CATEGORY_IDS.name


def rows_in_use(ids: tf.Tensor, rows: int) -> tf.Tensor:
  """int64 [n] sorted distinct values of `ids` (slots in [0, rows)).

  A presence count (bincount) over the table: linear in the number of ids
  and the table size (tf.unique's hash table slows down past ~10^6 ids:
  166 ms vs 44 ms at B=256, L=4096 on 2 cores).
  """
  present = tf.math.bincount(
      tf.cast(tf.reshape(ids, [-1]), tf.int32), minlength=rows, maxlength=rows
  )
  return tf.where(present > 0)[:, 0]


@tf.keras.utils.register_keras_serializable(package="eta")
class FeatureEmbeddings(tf.keras.layers.Layer):
  """Item, category, time-gap and behaviour-type embeddings (slot 0 = padding).

  Args:
    embedding_dim: d of the item and category tables.
    side_embedding_dim: width of the time-gap and behaviour-type tables.
    init_stddev: stddev of the N(0, s) initial rows.
    use_item_ids: embed item ids; False leaves them out of every vector.
    retrieval_embedding: "item" or "item_category" (`retrieval_vectors`).
    attention_embedding_dim: None: one set of id tables serves everything.
      An int: separate ATTENTION item/category tables of that width (DARE,
      arXiv 2410.02604), which `retrieval_vectors` and `attention_query` /
      `attention_keys` read (what decides which behaviours matter), while
      `query`, `short_keys` and `keys` (what is pooled and reaches the head)
      read the representation tables.
    **kwargs: standard Layer arguments.

  Shapes (any leading dims): `query(item, category)` [..., Dq] with Dq = 2d
  (d without item ids); `short_keys(history)` [..., Dq] (the same space,
  for DIN); `keys(history)` [..., Dq + 2 * side_dim];
  `retrieval_vectors(item, category)` [..., d or 2d] (d_att or 2 d_att when
  decoupled); `attention_query` / `attention_keys` [..., Da] with Da = Dq,
  or d_att per id table when decoupled.
  """

  def __init__(
      self,
      embedding_dim: int = 32,
      side_embedding_dim: int = 8,
      init_stddev: float = 0.05,
      use_item_ids: bool = True,
      retrieval_embedding: str = "item",
      attention_embedding_dim: Optional[int] = None,
      **kwargs,
  ):
    super().__init__(**kwargs)
    typed_config.int_value("embedding_dim", embedding_dim, 1)
    typed_config.int_value("side_embedding_dim", side_embedding_dim, 1)
    if typed_config.float_value("init_stddev", init_stddev, 0.0, 1e3) == 0.0:
      raise typed_config.ConfigError("init_stddev must be > 0, got 0")
    typed_config.bool_value("use_item_ids", use_item_ids)
    if retrieval_embedding not in config_lib.RETRIEVAL_EMBEDDINGS:
      raise ValueError(
          f"retrieval_embedding must be one of {config_lib.RETRIEVAL_EMBEDDINGS}, "
          f"got {retrieval_embedding!r}."
      )
    if not use_item_ids and retrieval_embedding == "item":
      raise ValueError("use_item_ids=False needs retrieval_embedding='item_category'.")
    if attention_embedding_dim is not None:
      typed_config.int_value("attention_embedding_dim", attention_embedding_dim, 1)
    self.attention_embedding_dim = attention_embedding_dim
    self.embedding_dim = embedding_dim
    self.side_embedding_dim = side_embedding_dim
    self.init_stddev = float(init_stddev)
    self.use_item_ids = use_item_ids
    self.retrieval_embedding = retrieval_embedding

    def table(rows: int, dim: int, name: str) -> tf.keras.layers.Embedding:
      return tf.keras.layers.Embedding(
          rows, dim, name=name,
          embeddings_initializer=tf.keras.initializers.RandomNormal(
              stddev=self.init_stddev
          ),
      )

    self.item_embedding = (
        table(features.ITEM_ID.buckets, embedding_dim, "item_embedding")
        if use_item_ids else None
    )
    self.category_embedding = table(
        features.CATEGORY_ID.buckets, embedding_dim, "category_embedding"
    )
    self.time_gap_embedding = table(
        features.TIME_GAP_BUCKETS, side_embedding_dim, "time_gap_embedding"
    )
    self.behavior_type_embedding = table(
        len(features.BEHAVIOR_TYPES) + 1, side_embedding_dim, "behavior_type_embedding"
    )
    self.attention_item_embedding = None
    self.attention_category_embedding = None
    if attention_embedding_dim is not None:
      if use_item_ids:
        self.attention_item_embedding = table(
            features.ITEM_ID.buckets, attention_embedding_dim, "attention_item_embedding"
        )
      self.attention_category_embedding = table(
          features.CATEGORY_ID.buckets, attention_embedding_dim,
          "attention_category_embedding",
      )

  def build(self, input_shape=None):
    for layer in (self.id_tables() + self.attention_tables()
                  + [self.time_gap_embedding, self.behavior_type_embedding]):
      layer.build([None])
    super().build(input_shape)

  def id_tables(self) -> list[tf.keras.layers.Embedding]:
    """The item (if used) and category tables."""
    return [t for t in (self.item_embedding, self.category_embedding) if t is not None]

  def attention_tables(self) -> list[tf.keras.layers.Embedding]:
    """The separate attention item (if used) and category tables, if any."""
    return [t for t in (self.attention_item_embedding, self.attention_category_embedding)
            if t is not None]

  @property
  def decoupled(self) -> bool:
    return self.attention_embedding_dim is not None

  @property
  def query_width(self) -> int:
    return self.embedding_dim * len(self.id_tables())

  @property
  def key_width(self) -> int:
    return self.query_width + 2 * self.side_embedding_dim

  def _ids(self, item: tf.Tensor, category: tf.Tensor) -> tf.Tensor:
    parts = [self.category_embedding(category)]
    if self.item_embedding is not None:
      parts.insert(0, self.item_embedding(item))
    return tf.concat(parts, axis=-1)

  def query(self, item: tf.Tensor, category: tf.Tensor) -> tf.Tensor:
    """Candidate slots [...] -> queries [..., Dq]."""
    return self._ids(item, category)

  def short_keys(self, history: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """History ids [..., n] -> [..., n, Dq] in the query's space (DIN)."""
    return self._ids(history[_HIST_ITEMS], history[_HIST_CATEGORIES])

  def keys(self, history: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """History ids [..., n] -> attention keys [..., n, Dq + 2 * side_dim]."""
    return tf.concat(
        [
            self.short_keys(history),
            self.time_gap_embedding(history[transforms.HIST_TIME_GAP_BUCKETS]),
            self.behavior_type_embedding(history[features.HIST_BEHAVIOR_TYPES.name]),
        ],
        axis=-1,
    )

  def retrieval_vectors(self, item: tf.Tensor, category: tf.Tensor) -> tf.Tensor:
    """What retrieval compares: item rows, or [item, category] rows (of the
    attention tables when decoupled)."""
    if self.retrieval_embedding == "item":
      return self.retrieval_item_table()(item)
    return self.attention_query(item, category)

  def retrieval_item_table(self) -> tf.keras.layers.Embedding:
    """The item table retrieval reads (eta's signature table hashes it)."""
    return self.attention_item_embedding if self.decoupled else self.item_embedding

  def attention_query(self, item: tf.Tensor, category: tf.Tensor) -> tf.Tensor:
    """Candidate slots [...] -> [..., Da]: what a scorer compares (sam)."""
    if not self.decoupled:
      return self._ids(item, category)
    parts = [self.attention_category_embedding(category)]
    if self.attention_item_embedding is not None:
      parts.insert(0, self.attention_item_embedding(item))
    return tf.concat(parts, axis=-1)

  def attention_keys(self, history: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """History ids [..., n] -> [..., n, Da] in `attention_query`'s space."""
    return self.attention_query(history[_HIST_ITEMS], history[_HIST_CATEGORIES])

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update({
        "embedding_dim": self.embedding_dim,
        "side_embedding_dim": self.side_embedding_dim,
        "init_stddev": self.init_stddev,
        "use_item_ids": self.use_item_ids,
        "retrieval_embedding": self.retrieval_embedding,
        "attention_embedding_dim": self.attention_embedding_dim,
    })
    return config


class _CompiledFunctions:
  """XLA-compiled helpers, kept outside Keras' object tracking.

  A tf.function stored as a tracked attribute would be exported into the
  SavedModel with its XLA attribute; a plain object is invisible to it.
  """

  def __init__(self):
    self.functions: dict[str, Callable[..., Any]] = {}

  def get(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    if name not in self.functions:
      self.functions[name] = tf.function(function, jit_compile=True)
    return self.functions[name]


class LongBranch(tf.keras.layers.Layer):
  """Base of the long-sequence branches: the two paths and the statistics.

  Subclasses implement `interest` (batch) and `interest_shared` (one
  history); this class appends the target-aware history statistics to both
  when `long_statistics` is set.

  Args:
    embeddings: the model's FeatureEmbeddings (shared, not owned).
    short_seq_len: the statistics' short window.
    long_statistics: append `history_statistics` to the output.
    statistics_bins: with long_statistics, each statistic also enters as
      its position in this many quantile bins (`PiecewiseLinearEncoding`,
      boundaries set by `adapt_statistics` from training data); 0: raw only.
    jit_compile: run the heavy pieces under XLA in the batch path.
    **kwargs: standard Layer arguments.

  Call arguments (batch path):
    candidates: {item_id, category_id: int64 [B], query: float [B, Dq]}.
    history: the sequence features, int64 [B, L].
    mask: bool [B, L].
    training: Keras flag.

  Output: float32 [B, width] (`shared`: [N, width]).
  """

  def __init__(
      self,
      embeddings: FeatureEmbeddings,
      short_seq_len: int = features.SHORT_SEQ_LEN,
      long_statistics: bool = True,
      statistics_bins: int = 0,
      jit_compile: bool = False,
      **kwargs,
  ):
    super().__init__(**kwargs)
    if not isinstance(embeddings, FeatureEmbeddings):
      embeddings = tf.keras.layers.deserialize(embeddings)
    typed_config.int_value("short_seq_len", short_seq_len, 1)
    typed_config.bool_value("long_statistics", long_statistics)
    typed_config.bool_value("jit_compile", jit_compile)
    self.embeddings = embeddings
    self.short_seq_len = short_seq_len
    self.long_statistics = long_statistics
    self.statistics_bins = typed_config.int_value("statistics_bins", statistics_bins, 0)
    self.statistics_encoding = (
        piecewise_linear.PiecewiseLinearEncoding(
            num_bins=statistics_bins, name="statistics_encoding")
        if long_statistics and statistics_bins else None
    )
    self.jit_compile = jit_compile
    self._compiled = _CompiledFunctions()
    self._xla_off = 0

  # Positions of the history the shared path needs at least (top-k: k).
  min_positions: int = 1

  @contextlib.contextmanager
  def xla_disabled(self) -> Iterator[None]:
    """Within the block, functions traced call no XLA (export, build)."""
    self._xla_off += 1
    try:
      yield
    finally:
      self._xla_off -= 1

  def _jit(self, name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    if self.jit_compile and not self._xla_off:
      return self._compiled.get(name, function)
    return function

  def freeze(self) -> None:
    """Prepares serving constants from the current weights (default: none)."""

  def unfreeze(self) -> None:
    """Drops what `freeze` prepared."""

  def interest(self, candidates, history, mask, training) -> tf.Tensor:
    raise NotImplementedError

  def interest_shared(self, candidates, history, mask) -> tf.Tensor:
    raise NotImplementedError

  def raw_statistics(self, candidates, history, mask) -> tf.Tensor:
    """The history statistics before any encoding, float32 [B, num_statistics()]."""
    slots = {name: candidates[name][:, tf.newaxis] for name in (_ITEM, _CATEGORY)}
    return history_statistics.history_statistics(
        slots, history, mask, self.short_seq_len
    )[:, 0]

  def _encoded(self, statistics: tf.Tensor) -> tf.Tensor:
    if self.statistics_encoding is None:
      return statistics
    return self.statistics_encoding(statistics)

  def adapt_statistics(self, statistics: np.ndarray) -> None:
    """Sets the statistics' bin boundaries from raw statistics [n, S] of
    training examples (no-op without the encoding)."""
    if self.statistics_encoding is not None:
      self.statistics_encoding.adapt(statistics)

  def call(self, candidates, history, mask, training=False):
    parts = [self.interest(candidates, history, mask, training)]
    if self.long_statistics:
      parts.append(self._encoded(self.raw_statistics(candidates, history, mask)))
    return tf.concat(parts, axis=-1)

  def shared(self, candidates, history, mask) -> tf.Tensor:
    """N candidates [N] over one history [T] (mask [T]) -> float32 [N, width]."""
    parts = [self.interest_shared(candidates, history, mask)]
    if self.long_statistics:
      slots = {name: candidates[name][tf.newaxis] for name in (_ITEM, _CATEGORY)}
      parts.append(self._encoded(history_statistics.history_statistics(
          slots, {k: v[tf.newaxis] for k, v in history.items()}, mask[tf.newaxis],
          self.short_seq_len,
      )[0]))
    return tf.concat(parts, axis=-1)

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update({
        "embeddings": tf.keras.layers.serialize(self.embeddings),
        "short_seq_len": self.short_seq_len,
        "long_statistics": self.long_statistics,
        "statistics_bins": self.statistics_bins,
        "jit_compile": self.jit_compile,
    })
    return config


class _SelectingBranch(LongBranch):
  """A branch that keeps top_k behaviours and attends over them."""

  def __init__(
      self,
      top_k: int = 64,
      num_heads: int = 2,
      head_dim: int = 32,
      dropout: float = 0.0,
      **kwargs,
  ):
    super().__init__(**kwargs)
    typed_config.int_value("top_k", top_k, 1)
    self.top_k = top_k
    self.min_positions = top_k
    self.attention = target_attention.MultiHeadTargetAttention(
        num_heads=num_heads, head_dim=head_dim, dropout=dropout, name="attention"
    )

  def select(self, candidates, history, mask) -> tuple[tf.Tensor, tf.Tensor]:
    """Batch: (indices int32 [B, k], valid bool [B, k])."""
    raise NotImplementedError

  def select_shared(self, candidates, history, mask) -> tuple[tf.Tensor, tf.Tensor]:
    """One history: (indices int32 [N, k] into T, valid bool [N, k])."""
    raise NotImplementedError

  def interest(self, candidates, history, mask, training):
    indices, valid = self.select(candidates, history, mask)
    selected = {
        name: tf.gather(values, indices, batch_dims=1) for name, values in history.items()
    }
    keys = self.embeddings.keys(selected)

    def attend(query, keys, valid):
      return self.attention(query, keys, valid, training=training)

    return self._jit(f"attend_{bool(training)}", attend)(candidates[QUERY], keys, valid)

  def interest_shared(self, candidates, history, mask):
    indices, valid = self.select_shared(candidates, history, mask)
    # Each distinct retrieved position is embedded and projected once.
    positions, slots = tf.unique(tf.reshape(indices, [-1]))
    keys = self.embeddings.keys(
        {name: tf.gather(values, positions) for name, values in history.items()}
    )
    return self.attention.gathered(
        candidates[QUERY], keys, tf.reshape(slots, tf.shape(indices)), valid
    )

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update({
        "top_k": self.top_k,
        "num_heads": self.attention.num_heads,
        "head_dim": self.attention.head_dim,
        "dropout": self.attention.dropout,
    })
    return config


@tf.keras.utils.register_keras_serializable(package="eta")
class EtaBranch(_SelectingBranch):
  """ETA: SimHash signatures, Hamming top-k, target attention over the k.

  Training hashes the CURRENT retrieval embeddings of each distinct id of
  the batch once per step (end to end: retrieval follows the embeddings; no
  gradient through sign or top-k). `freeze()` (export) stores the signature
  of every item slot as a constant table when retrieval reads item
  embeddings only, or of every category slot when it reads no item ids
  (`table_slot`); both paths then look signatures up.

  Args:
    num_bits: SimHash bits m.
    seed: SimHash projection seed.
    prefer_recent: HammingTopK's tie order.
    (others: see _SelectingBranch and LongBranch)
  """

  def __init__(self, num_bits: int = 64, seed: int = 0, prefer_recent: bool = False,
               **kwargs):
    super().__init__(**kwargs)
    self.simhash = simhash.SimHash(num_bits=num_bits, seed=seed, name="simhash")
    self.hamming_top_k = retrieval.HammingTopK(
        k=self.top_k, prefer_recent=prefer_recent, name="hamming_top_k"
    )
    self._table: Optional[tf.Tensor] = None

  @property
  def table_slot(self) -> Optional[str]:
    """The id a signature is a function of (its table's rows), or None.

    Retrieval over item embeddings: the item slot. Over [item, category]
    without item ids: the category slot. Over [item, category] with item
    ids: None (pairs are hashed per request; no table).
    """
    if self.embeddings.retrieval_embedding == "item":
      return _ITEM
    if not self.embeddings.use_item_ids:
      return _CATEGORY
    return None

  @property
  def uses_item_table(self) -> bool:
    return self.table_slot == _ITEM

  def signature_table(self) -> tf.Tensor:
    """int64 [slots, W]: the signature of every item (or category) slot."""
    if self.table_slot == _CATEGORY:
      categories = tf.range(features.CATEGORY_ID.buckets, dtype=tf.int64)
      return self.simhash(tf.stop_gradient(self.embeddings.retrieval_vectors(
          tf.zeros_like(categories), categories)))
    return self.simhash(self.embeddings.retrieval_item_table().embeddings)

  def freeze(self) -> None:
    if self.table_slot is not None:
      with tf.init_scope():
        self._table = tf.constant(self.signature_table().numpy())

  def unfreeze(self) -> None:
    self._table = None

  def signatures(self, item: tf.Tensor, category: tf.Tensor) -> tf.Tensor:
    """Slots [...] -> int64 [..., W] packed signatures (no gradient)."""
    if self._table is not None:
      return tf.gather(self._table, item if self.table_slot == _ITEM else category)
    if self.uses_item_table:
      table = self.embeddings.retrieval_item_table()
      rows = rows_in_use(item, table.input_dim)
      hashed = self.simhash(tf.stop_gradient(table(rows)))
      lookup = tf.scatter_nd(
          rows[:, tf.newaxis], hashed, [table.input_dim, self.simhash.num_words]
      )
      return tf.gather(lookup, item)
    return hash_pairs(self.simhash, self.embeddings.retrieval_vectors, item, category)

  def select(self, candidates, history, mask):
    both_items = tf.concat([candidates[_ITEM][:, tf.newaxis], history[_HIST_ITEMS]], 1)
    both_categories = tf.concat(
        [candidates[_CATEGORY][:, tf.newaxis], history[_HIST_CATEGORIES]], 1
    )
    signatures = self.signatures(both_items, both_categories)
    return self._jit("hamming_top_k", self.hamming_top_k)(
        signatures[:, 0], signatures[:, 1:], mask
    )

  def select_shared(self, candidates, history, mask):
    return self.hamming_top_k.shared(
        self.signatures(candidates[_ITEM], candidates[_CATEGORY]),
        self.signatures(history[_HIST_ITEMS], history[_HIST_CATEGORIES]),
        mask,
    )

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update({
        "num_bits": self.simhash.num_bits,
        "seed": self.simhash.seed,
        "prefer_recent": self.hamming_top_k.prefer_recent,
    })
    return config


def hash_pairs(hasher: simhash.SimHash, vectors: Callable[[tf.Tensor, tf.Tensor], tf.Tensor],
               item: tf.Tensor, category: tf.Tensor) -> tf.Tensor:
  """Signatures of `vectors(item, category)`, each distinct pair hashed once."""
  buckets = features.CATEGORY_ID.buckets
  pairs = tf.reshape(item, [-1]) * buckets + tf.reshape(category, [-1])
  distinct, position = tf.unique(pairs)
  vectors = tf.stop_gradient(
      vectors(distinct // buckets, distinct % buckets)
  )
  signatures = tf.gather(hasher(vectors), position)
  return tf.reshape(signatures, tf.concat([tf.shape(item), [hasher.num_words]], 0))


@tf.keras.utils.register_keras_serializable(package="eta")
class ExactTopKBranch(_SelectingBranch):
  """Top-k by the exact dot product of retrieval vectors, then attention."""

  def select(self, candidates, history, mask):
    query = self.embeddings.retrieval_vectors(candidates[_ITEM], candidates[_CATEGORY])
    behaviours = self.embeddings.retrieval_vectors(
        history[_HIST_ITEMS], history[_HIST_CATEGORIES]
    )
    k = self.top_k

    def exact_top_k(query, behaviours, mask):
      scores = tf.einsum("bd,bld->bl", query, behaviours)
      scores = tf.where(mask, scores, tf.float32.min)
      indices = tf.math.top_k(scores, k=k).indices
      return indices, tf.gather(mask, indices, batch_dims=1)

    return self._jit("exact_top_k", exact_top_k)(
        tf.stop_gradient(query), tf.stop_gradient(behaviours), mask
    )

  def select_shared(self, candidates, history, mask):
    query = self.embeddings.retrieval_vectors(candidates[_ITEM], candidates[_CATEGORY])
    behaviours = self.embeddings.retrieval_vectors(
        history[_HIST_ITEMS], history[_HIST_CATEGORIES]
    )  # [T, d]
    scores = tf.matmul(query, behaviours, transpose_b=True)  # [N, T]
    scores = tf.where(mask[tf.newaxis], scores, tf.float32.min)
    indices = tf.math.top_k(scores, k=self.top_k).indices
    return indices, tf.gather(mask, indices)


def same_category_recent(category_id, hist_category_ids, mask, k: int):
  """SIM (hard): the k most recent real behaviours of the candidate's category.

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


@tf.keras.utils.register_keras_serializable(package="eta")
class SimHardBranch(_SelectingBranch):
  """SIM (hard): the k most recent behaviours of the candidate's category."""

  def select(self, candidates, history, mask):
    return self._jit("same_category_recent", same_category_recent)(
        candidates[_CATEGORY], history[_HIST_CATEGORIES], mask, self.top_k
    )

  def select_shared(self, candidates, history, mask):
    n = tf.shape(candidates[_CATEGORY])[0]
    length = tf.shape(mask)[0]
    return same_category_recent(
        candidates[_CATEGORY],
        tf.broadcast_to(history[_HIST_CATEGORIES][tf.newaxis], [n, length]),
        tf.broadcast_to(mask[tf.newaxis], [n, length]),
        self.top_k,
    )


@tf.keras.utils.register_keras_serializable(package="eta")
class FullAttentionBranch(LongBranch):
  """Multi-head target attention over all L (the quality reference)."""

  def __init__(self, num_heads: int = 2, head_dim: int = 32, dropout: float = 0.0,
               **kwargs):
    super().__init__(**kwargs)
    self.attention = target_attention.MultiHeadTargetAttention(
        num_heads=num_heads, head_dim=head_dim, dropout=dropout, name="attention"
    )

  def interest(self, candidates, history, mask, training):
    def attend(query, keys, mask):
      return self.attention(query, keys, mask, training=training)

    return self._jit(f"attend_{bool(training)}", attend)(
        candidates[QUERY], self.embeddings.keys(history), mask
    )

  def interest_shared(self, candidates, history, mask):
    # The L keys are projected once; N queries attend over them.
    keys = self.embeddings.keys(history)
    return self.attention(
        candidates[QUERY][tf.newaxis], keys[tf.newaxis], mask[tf.newaxis]
    )[0]

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update({
        "num_heads": self.attention.num_heads,
        "head_dim": self.attention.head_dim,
        "dropout": self.attention.dropout,
    })
    return config


@tf.keras.utils.register_keras_serializable(package="eta")
class AvgPoolBranch(LongBranch):
  """Masked mean of all L behaviour keys."""

  @staticmethod
  def _pool(keys: tf.Tensor, mask: tf.Tensor) -> tf.Tensor:
    weights = tf.cast(mask, keys.dtype)[..., tf.newaxis]
    count = tf.maximum(tf.reduce_sum(weights, axis=-2), 1.0)
    return tf.reduce_sum(keys * weights, axis=-2) / count

  def interest(self, candidates, history, mask, training):
    return self._pool(self.embeddings.keys(history), mask)

  def interest_shared(self, candidates, history, mask):
    pooled = self._pool(self.embeddings.keys(history), mask)  # [D]
    n = tf.shape(candidates[_ITEM])[0]
    return tf.broadcast_to(pooled[tf.newaxis], [n, tf.shape(pooled)[0]])


@tf.keras.utils.register_keras_serializable(package="eta")
class SdimBranch(LongBranch):
  """SDIM: hash-bucket aggregation of the [item, category] behaviours."""

  def __init__(self, num_bits: int = 48, tau: int = 3, seed: int = 0, **kwargs):
    super().__init__(**kwargs)
    self.aggregation = sdim.SdimAggregation(
        num_bits=num_bits, tau=tau, seed=seed, name="sdim_aggregation"
    )

  def _signatures(self, item, category):
    # SDIM hashes the query-space vector of a pair, whatever retrieval reads.
    return hash_pairs(self.aggregation.simhash, self.embeddings.query, item, category)

  def interest(self, candidates, history, mask, training):
    behaviours = self.embeddings.short_keys(history)
    items = tf.concat([candidates[_ITEM][:, tf.newaxis], history[_HIST_ITEMS]], 1)
    categories = tf.concat([candidates[_CATEGORY][:, tf.newaxis], history[_HIST_CATEGORIES]], 1)
    signatures = self._signatures(items, categories)

    def aggregate(query, behaviours, mask, query_signatures, key_signatures):
      return self.aggregation(
          query, behaviours, mask, query_signatures=query_signatures,
          key_signatures=key_signatures,
      )

    return self._jit("sdim", aggregate)(
        candidates[QUERY], behaviours, mask, signatures[:, 0], signatures[:, 1:]
    )

  def interest_shared(self, candidates, history, mask):
    behaviours = self.embeddings.short_keys(history)  # [T, D]
    query_signatures = self._signatures(candidates[_ITEM], candidates[_CATEGORY])
    key_signatures = self._signatures(history[_HIST_ITEMS], history[_HIST_CATEGORIES])
    return self.aggregation(
        candidates[QUERY][tf.newaxis], behaviours[tf.newaxis], mask[tf.newaxis],
        query_signatures=query_signatures[tf.newaxis],
        key_signatures=key_signatures[tf.newaxis],
    )[0]

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    config.update({
        "num_bits": self.aggregation.num_bits,
        "tau": self.aggregation.tau,
        "seed": self.aggregation.seed,
    })
    return config


@tf.keras.utils.register_keras_serializable(package="eta")
class SamBranch(LongBranch):
  """SAM (trainer/layers/sam.py) over all L behaviours.

  The scorer compares the candidate and the memory with the behaviours in
  the attention space (`FeatureEmbeddings.attention_query/keys`: the query
  space, or the attention tables when decoupled); the passes read the full
  behaviour keys (ids and side features) as values. The shared path embeds
  the one history once and scores the N candidates over it.

  Args:
    sequence_length: max_seq_len (the position projections' rows).
    num_passes / scorer_units / projection_units / mode: see
      sam.SparseAttentiveMemory.
    (others: see LongBranch)
  """

  def __init__(self, sequence_length: int = features.DEFAULT_MAX_SEQ_LEN,
               num_passes: int = 2, scorer_units: int = 8, projection_units: int = 16,
               mode: str = "iter", **kwargs):
    super().__init__(**kwargs)
    self.memory = sam.SparseAttentiveMemory(
        sequence_length=sequence_length, num_passes=num_passes, scorer_units=scorer_units,
        projection_units=projection_units, mode=mode, value_dim=self.embeddings.key_width,
        name="sam",
    )

  def interest(self, candidates, history, mask, training):
    def remember(query, keys, values, mask):
      return self.memory(query, keys, values, mask, training=training)

    return self._jit(f"sam_{bool(training)}", remember)(
        self.embeddings.attention_query(candidates[_ITEM], candidates[_CATEGORY]),
        self.embeddings.attention_keys(history), self.embeddings.keys(history), mask,
    )

  def interest_shared(self, candidates, history, mask):
    return self.memory.shared(
        self.embeddings.attention_query(candidates[_ITEM], candidates[_CATEGORY]),
        self.embeddings.attention_keys(history), self.embeddings.keys(history), mask,
    )

  def get_config(self) -> dict[str, Any]:
    config = super().get_config()
    memory = self.memory.get_config()
    config.update({name: memory[name] for name in (
        "sequence_length", "num_passes", "scorer_units", "projection_units", "mode")})
    return config


def build_branch(
    model_config: config_lib.ModelConfig, embeddings: FeatureEmbeddings
) -> Optional[LongBranch]:
  """The variant's branch from the registry, or None (din)."""
  c = model_config
  spec = config_lib.VARIANT_REGISTRY[c.model]
  if spec.branch is None:
    return None
  common = dict(
      embeddings=embeddings, short_seq_len=c.short_seq_len,
      long_statistics=c.long_statistics, statistics_bins=c.statistics_bins,
      jit_compile=c.jit_compile,
      name="long_branch",
  )
  attention = dict(num_heads=c.num_heads, head_dim=c.head_dim, dropout=c.dropout)
  cls = globals()[spec.branch]
  if cls is EtaBranch:
    return cls(num_bits=c.num_bits, seed=c.seed, prefer_recent=c.prefer_recent,
               top_k=c.top_k, **attention, **common)
  if issubclass(cls, _SelectingBranch):
    return cls(top_k=c.top_k, **attention, **common)
  if cls is FullAttentionBranch:
    return cls(**attention, **common)
  if cls is SdimBranch:
    return cls(num_bits=c.sdim_num_bits, tau=c.sdim_tau, seed=c.seed, **common)
  if cls is SamBranch:
    return cls(sequence_length=c.max_seq_len, num_passes=c.sam_num_passes,
               scorer_units=c.sam_scorer_units, projection_units=c.sam_projection_units,
               mode=c.sam_mode, **common)
  return cls(**common)
