"""The history rule: which behaviours a request sees, in which order.

A request at Unix second t (a training impression, or a call to the served
model) sees its user's behaviours with timestamp strictly less than t (a
behaviour in the same second is excluded: its order relative to the request
is unknown), ordered by (timestamp, item_id, category_id, behavior_type), the
most recent `max_seq_len` of them, oldest first. Behaviour rows are parsed
and validated by `ingest_parse`, so a row that ingestion rejects is in no history.

Ingestion (the Beam `ingest_histories`) and the serving client
(`serving/requests.py`) both build histories with these functions, so the
history a served model is called with equals the one it was trained on.
This module imports no Beam, TFX or TensorFlow: the client imports it.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence, Union

import numpy as np

from preprocessing import features
from preprocessing import ingest_parse
from preprocessing import typed_config

# Columns of a behaviour array [n, 4] (int64), in sort-key order.
TS, ITEM, CATEGORY, TYPE = range(4)
NUM_COLUMNS = 4
PV = features.BEHAVIOR_TYPES.index("pv")


def parse_behavior_line(
    line: Union[str, bytes], source: str, bounds: ingest_parse.TimestampBounds
) -> Union[ingest_parse.Behavior, ingest_parse.Reject]:
  """One Taobao-format behaviour line -> a Behavior, or a Reject with reason.

  Exactly ingestion's parsing and validation (ingest_parse.parse_line); bytes
  that are not UTF-8 are a ``bad_encoding`` reject.
  """
  result = ingest_parse.parse_line(line, source, ingest_parse.BEHAVIOR_ROWS, bounds)
  # Behaviour logs have no header, so parse_line never returns a Header.
  assert not isinstance(result, ingest_parse.Header), result
  return result


def as_array(rows: Iterable[Sequence[int]]) -> np.ndarray:
  """(timestamp, item, category, type) tuples -> an int64 [n, 4] array."""
  return np.array(list(rows), dtype=np.int64).reshape(-1, NUM_COLUMNS)


def row_of(behavior: ingest_parse.Behavior) -> tuple[int, int, int, int]:
  """A behaviour as a row of the arrays below (its sort key)."""
  return (
      behavior.timestamp, behavior.item_id, behavior.category_id,
      behavior.behavior_type,
  )


def behavior_rows(behaviors: Iterable[ingest_parse.Behavior]) -> np.ndarray:
  """Behaviours -> unsorted int64 [n, 4] (timestamp, item, category, type)."""
  return as_array(row_of(b) for b in behaviors)


def sort_behaviors(rows: np.ndarray) -> np.ndarray:
  """Sorts an int64 [n, 4] array by (timestamp, item, category, type).

  Sorting on every column makes the order of same-second behaviours, and so
  the max_seq_len cut, independent of log order and of the runner.
  """
  if len(rows) < 2:
    return rows
  order = np.lexsort((rows[:, TYPE], rows[:, CATEGORY], rows[:, ITEM], rows[:, TS]))
  return rows[order]


def most_recent(sorted_rows: np.ndarray, max_seq_len: int) -> np.ndarray:
  """The last `max_seq_len` rows of a sorted array (all when fewer)."""
  return sorted_rows[-max_seq_len:]


def window_bounds(
    sorted_timestamps: np.ndarray, request_timestamps: np.ndarray, max_seq_len: int
) -> tuple[np.ndarray, np.ndarray]:
  """[start, end) of each request's history in a sorted behaviour array.

  `end` is the number of behaviours strictly before the request (same
  second excluded); `start` keeps the most recent `max_seq_len` of them.
  """
  ends = np.searchsorted(sorted_timestamps, request_timestamps, side="left")
  return np.maximum(ends - max_seq_len, 0), ends


def history_before(
    sorted_rows: np.ndarray, request_timestamp: int, max_seq_len: int
) -> np.ndarray:
  """The rows of one request's history (a view of the sorted array)."""
  (start,), (end,) = window_bounds(
      sorted_rows[:, TS], np.array([request_timestamp], np.int64), max_seq_len
  )
  return sorted_rows[start:end]


def user_history(
    behaviors: Iterable[ingest_parse.Behavior],
    user_id: int,
    request_timestamp: int,
    max_seq_len: int,
) -> np.ndarray:
  """`user_id`'s history at `request_timestamp`: int64 [L, 4], oldest first."""
  typed_config.max_seq_len_value(max_seq_len)
  rows = behavior_rows(b for b in behaviors if b.user_id == user_id)
  return history_before(sort_behaviors(rows), request_timestamp, max_seq_len)


def rank_behavior_types(types: Optional[Sequence[int]], length: int) -> list[int]:
  """Behaviour types as the `rank` signature takes them: the ingestion's codes
  (index into features.BEHAVIOR_TYPES); a history without types (None, an
  empty list, or MovieLens's NO_BEHAVIOR_TYPE) is all pv, as the Transform
  counts it."""
  if types is None or (len(types) == 0 and length):
    return [PV] * length
  return [PV if t == ingest_parse.NO_BEHAVIOR_TYPE else int(t) for t in types]
