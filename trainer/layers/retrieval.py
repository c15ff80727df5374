"""Top-k behaviours by Hamming distance between packed SimHash signatures.

ETA's retrieval step: for each example, the k history positions whose
signatures are closest to the candidate's. Padding never wins over a real
behaviour, and when a user has fewer than k behaviours the surplus slots come
back with valid=False so the attention downstream masks them.

Ties are common (distances are integers 0..m), so the order is made explicit
rather than left to the top_k kernel: every position gets the distinct score
`distance * L + tie_rank` (tie_rank = position, or L - 1 - position when
`prefer_recent`), computed exactly in int32 and cast to float32, which holds
integers exactly below 2**24. XLA's CPU top_k is ~8x slower on int32 than on
float32, hence the cast.
"""

from __future__ import annotations

import tensorflow as tf

from preprocessing import typed_config
from trainer.layers import input_checks
from trainer.layers import simhash

# float32 represents every integer up to 2**24 exactly.
_MAX_EXACT_FLOAT32_INT = 2**24


@tf.keras.utils.register_keras_serializable(package="eta")
class HammingTopK(tf.keras.layers.Layer):
  """Indices of the k behaviours nearest the query in Hamming distance.

  Order of the result: increasing distance; among equal distances, lower
  history index first (the older behaviour, since histories are left-padded
  oldest first), or higher index first with `prefer_recent=True`. Padding
  positions (mask False) come after every real behaviour, in the same tie
  order.

  Args:
    k: number of behaviours to retrieve, >= 1 and <= L.
    prefer_recent: break distance ties towards the more recent behaviour
      (higher index) instead of the older one.
    **kwargs: standard Layer arguments.

  Call arguments:
    query_signatures: int64 [B, W], packed signatures of the candidates.
    key_signatures: int64 [B, L, W], packed signatures of the history.
    mask: bool [B, L], True at real behaviours.

  Returns:
    indices: int32 [B, k], positions into L, nearest first.
    valid: bool [B, k], False for slots holding padding (the user had fewer
      than k behaviours).

  Example:
    >>> top = HammingTopK(k=2)
    >>> q = tf.constant([[0b0000]], tf.int64)
    >>> keys = tf.constant([[[0b0111], [0b0001], [0b0011]]], tf.int64)
    >>> top(q, keys, mask=tf.constant([[True, True, False]]))[0].numpy()
    array([[1, 0]], dtype=int32)
  """

  def __init__(self, k: int = 64, prefer_recent: bool = False, **kwargs):
    super().__init__(**kwargs)
    typed_config.int_value("k", k, 1)
    typed_config.bool_value("prefer_recent", prefer_recent)
    self.k = k
    self.prefer_recent = prefer_recent

  def _check_shapes(self, query_shape, key_shape, mask_shape):
    if query_shape.rank != 2 or key_shape.rank != 3 or mask_shape.rank != 2:
      raise ValueError(
          "HammingTopK expects query_signatures [B, W], key_signatures "
          f"[B, L, W] and mask [B, L]; got {query_shape}, {key_shape}, "
          f"{mask_shape}."
      )
    words = key_shape[-1]
    if words is None or query_shape[-1] != words:
      raise ValueError(
          "query and key signatures need the same static word count, got "
          f"{query_shape[-1]} and {words}."
      )
    length = key_shape[1]
    if length is None:
      raise ValueError(
          "HammingTopK needs a static history length L (pad to max_seq_len)."
      )
    if mask_shape[1] is not None and mask_shape[1] != length:
      raise ValueError(
          f"mask length {mask_shape[1]} differs from the history length "
          f"{length}."
      )
    if self.k > length:
      raise ValueError(
          f"k={self.k} is larger than the history length L={length}."
      )
    # Padding sits at distance max + 1, so scores reach (max + 2) * L.
    max_distance = simhash.BITS_PER_WORD * words
    if (max_distance + 2) * length > _MAX_EXACT_FLOAT32_INT:
      raise ValueError(
          f"L={length} with {words}-word signatures exceeds the exact float32 "
          f"score range (need (64 W + 2) L <= 2**24)."
      )
    return length

  def call(self, query_signatures, key_signatures, mask):
    query_signatures = tf.convert_to_tensor(query_signatures)
    key_signatures = tf.convert_to_tensor(key_signatures)
    mask = tf.convert_to_tensor(mask)
    input_checks.check_bool_mask(mask)
    length = self._check_shapes(
        query_signatures.shape, key_signatures.shape, mask.shape
    )
    distance = simhash.hamming_distance(
        query_signatures[:, tf.newaxis, :], key_signatures
    )
    padding_distance = simhash.BITS_PER_WORD * key_signatures.shape[-1] + 1
    distance = tf.where(mask, distance, padding_distance)
    position = tf.range(length, dtype=tf.int32)
    tie_rank = (length - 1 - position) if self.prefer_recent else position
    # Distinct integers < 2**24: exact in float32, so top_k has no ties.
    score = -tf.cast(distance * length + tie_rank, tf.float32)
    _, indices = tf.math.top_k(score, k=self.k, sorted=True)
    valid = tf.gather(mask, indices, batch_dims=1)
    return indices, valid

  def shared(self, query_signatures, key_signatures, mask):
    """The same selection for N queries over ONE shared history (serving).

    Returns the same SET of k positions per query as `call` (equal
    distance ties broken the same way), found by counting instead of
    sorting: Hamming distances are integers 0..m, so a per-query histogram
    of distances gives the distance threshold at which the k-th nearest
    sits, and one pass keeps everything below it plus the first (or, with
    prefer_recent, last) positions at it. No top_k over N x T, which
    dominated serving time (bench/results/serving.md). Attention downstream
    is order-invariant, so the set is what matters.

    Args:
      query_signatures: int64 [N, W].
      key_signatures: int64 [T, W] (T may be dynamic, T >= k).
      mask: bool [T], True at real behaviours.

    Returns:
      indices: int32 [N, k] positions into T, in increasing position order.
      valid: bool [N, k], False at padding slots.
    """
    query_signatures = tf.convert_to_tensor(query_signatures)
    key_signatures = tf.convert_to_tensor(key_signatures)
    mask = tf.convert_to_tensor(mask)
    if (query_signatures.shape.rank != 2 or key_signatures.shape.rank != 2
        or mask.shape.rank != 1 or mask.dtype != tf.bool):
      raise ValueError(
          "HammingTopK.shared expects query_signatures [N, W], key_signatures "
          f"[T, W] and a bool mask [T]; got {query_signatures.shape}, "
          f"{key_signatures.shape}, {mask.dtype.name} {mask.shape}."
      )
    words = key_signatures.shape[-1]
    if words is None or query_signatures.shape[-1] != words:
      raise ValueError(
          "query and key signatures need the same static word count, got "
          f"{query_signatures.shape[-1]} and {words}."
      )
    # A history repeats its items and categories: distances are computed
    # once per distinct signature (G << T) and every position reads its
    # group's. Padding is a group of its own at distance m + 1.
    if words == 1:
      distinct, group = tf.unique(key_signatures[:, 0], out_idx=tf.int32)
      distinct = distinct[:, tf.newaxis]
    else:
      distinct, group = tf.raw_ops.UniqueV2(
          x=key_signatures, axis=tf.constant([0], tf.int64), out_idx=tf.int32
      )
    padding_group = tf.shape(distinct)[0]
    group = tf.where(mask, group, padding_group)
    max_distance = simhash.BITS_PER_WORD * words
    distance = simhash.hamming_distance(
        query_signatures[:, tf.newaxis, :], distinct[tf.newaxis]
    )  # int32 [N, G]
    distance = tf.pad(distance, [[0, 0], [0, 1]], constant_values=max_distance + 1)
    return select_nearest_by_count(
        distance, group, self.k, max_distance, self.prefer_recent
    )

  def get_config(self):
    config = super().get_config()
    config.update({"k": self.k, "prefer_recent": self.prefer_recent})
    return config


def select_nearest_by_count(
    group_distance: tf.Tensor,
    group: tf.Tensor,
    k: int,
    max_distance: int,
    prefer_recent: bool = False,
) -> tuple[tf.Tensor, tf.Tensor]:
  """The k positions of smallest integer distance per row, by a histogram.

  Positions come in groups that share a distance (equal signatures, and
  padding as one group at max_distance + 1); the distances are given per
  group. Order of preference: smaller distance; at equal distance the lower
  position (or the higher with prefer_recent); padding after every real
  position, as in `HammingTopK.call`.

  Nothing touches all N x T (candidate, position) pairs: the histogram and
  the threshold work on the N x G group distances, the positions of the
  groups at or below each row's threshold are listed from a by-group order
  of the history (sorted once), and the tie-break sorts at most quota
  positions per tied group.

  Args:
    group_distance: int32 [N, G], values in [0, max_distance + 1] (the
      latter only for padding).
    group: int32 [T], each position's group in [0, G); T >= k.
    k: positions to keep per row.
    max_distance: the largest real distance (m bits).
    prefer_recent: the tie order.

  Returns:
    (indices int32 [N, k] in increasing position order, valid bool [N, k]:
    False where a padding position had to fill the k).
  """
  rows = tf.shape(group_distance)[0]
  groups = tf.shape(group_distance)[1]
  length = tf.cast(tf.size(group), tf.int64)
  bins = max_distance + 2
  size = tf.math.bincount(group, minlength=groups, maxlength=groups)  # [G]
  # One flat histogram with a bin range per row, each group weighted by its
  # size (faster than bincount's axis=-1 on CPU).
  offsets = tf.range(rows, dtype=tf.int32)[:, tf.newaxis] * bins
  counts = tf.reshape(
      tf.math.bincount(
          tf.reshape(group_distance + offsets, [-1]),
          weights=tf.reshape(tf.broadcast_to(size, tf.shape(group_distance)), [-1]),
          minlength=rows * bins, maxlength=rows * bins,
      ),
      [rows, bins],
  )
  at_most = tf.cumsum(counts, axis=1)  # [N, bins]: positions with d <= j
  # The k-th nearest sits at the smallest distance j with at_most[j] >= k.
  threshold = tf.reduce_sum(tf.cast(at_most < k, tf.int32), axis=1)  # [N]
  below = tf.gather(at_most - counts, threshold, batch_dims=1)  # d < threshold
  # Ties to keep per row: at least 1, at most the positions at the threshold.
  quota = k - below
  # The (row, group) pairs at or below each row's threshold. A pair below
  # contributes every position of its group; a tie pair only its group's
  # first (prefer_recent: last) quota positions, since the row's quota
  # earliest ties are among those.
  pairs = tf.where(group_distance <= threshold[:, tf.newaxis])  # int64 [P, 2]
  pair_row = pairs[:, 0]
  pair_group = tf.cast(pairs[:, 1], tf.int32)
  pair_is_tie = tf.equal(
      tf.gather_nd(group_distance, pairs), tf.gather(threshold, pair_row)
  )
  group_size = tf.gather(size, pair_group)
  pair_size = tf.where(
      pair_is_tie, tf.minimum(group_size, tf.gather(quota, pair_row)), group_size
  )
  # Where the pair's positions start in the by-group order of the history
  # (positions ascending within a group).
  pair_first = tf.gather(tf.cumsum(size, exclusive=True), pair_group)
  if prefer_recent:
    pair_first += group_size - pair_size
  entry_start = tf.cumsum(pair_size, exclusive=True)
  entries = tf.reduce_sum(pair_size)
  # Entry -> its pair: a step at each pair's first entry (cheaper than
  # RaggedTensor.value_rowids, which builds a [pairs, longest] mask).
  entry_pair = tf.cumsum(tf.math.bincount(
      entry_start[1:], minlength=entries, maxlength=entries
  ))
  within = tf.range(entries) - tf.gather(entry_start, entry_pair)
  by_group = tf.argsort(group, stable=True)
  entry_position = tf.gather(by_group, tf.gather(pair_first, entry_pair) + within)
  # (row, position) as one sortable key.
  entry_key = tf.gather(pair_row, entry_pair) * length + tf.cast(entry_position, tf.int64)
  entry_is_tie = tf.gather(pair_is_tie, entry_pair)
  # Ties in row, then position order; each row's first (or last) quota kept.
  tie_key = tf.sort(tf.boolean_mask(entry_key, entry_is_tie))
  tie_row = tie_key // length
  tie_count = tf.math.bincount(
      tf.cast(tie_row, tf.int32), minlength=rows, maxlength=rows
  )
  tie_rank = (tf.range(tf.size(tie_key), dtype=tf.int32)
              - tf.gather(tf.cumsum(tie_count, exclusive=True), tie_row))
  if prefer_recent:
    tie_rank = tf.gather(tie_count, tie_row) - 1 - tie_rank
  kept_ties = tf.boolean_mask(tie_key, tie_rank < tf.gather(quota, tie_row))
  # Exactly k per row (T >= k), rows in order, positions ascending.
  selected = tf.sort(tf.concat(
      [tf.boolean_mask(entry_key, tf.logical_not(entry_is_tie)), kept_ties], 0
  ))
  indices = tf.reshape(tf.cast(selected % length, tf.int32), [rows, k])
  valid = tf.gather(group_distance, tf.gather(group, indices), batch_dims=1) <= max_distance
  return indices, valid
