"""Requests for the ETA model in TF Serving: built from a log and validated.

Two signatures (names from the feature registry):
- `rank` (`RankRequest`; inputs `features.RANK_INPUT_NAMES`): one user's
  history (`hist_item_ids`, `hist_category_ids`, `hist_timestamps`,
  `hist_behavior_types`, int64 [L], oldest first, L <= max_seq_len; types are
  the ingestion's codes, the index into `features.BEHAVIOR_TYPES`, all pv
  when the log has none) and N candidates (`item_ids`, `category_ids`, int64
  [N]) at `request_timestamp` (int64 scalar) -> `probabilities` float32 [N].
- `serving_default` (`ExampleRequest`): tf.Examples in the training format,
  label absent (`examples`, string [B]) -> `probabilities` float32 [B].

Histories are built from a behaviour log by ingestion's own rule
(`preprocessing.history`: ingestion's row parsing and validation, strictly
before the request, the same-second tie order, the max_seq_len cut), so a
request carries the history the model was trained with. Requests are
validated when constructed: non-integer or negative ids, mismatched
lengths, no candidates, L > max_seq_len, unknown behaviour types, a history
not strictly before the request or not oldest first all raise RequestError
with the reason.

Pure Python and numpy: no Beam, TFX or TensorFlow. The wire formats (gRPC
PredictRequest, REST JSON, the tf.Example bytes) are `serving.transport`'s;
the command line is `serving.client`'s.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import numbers
from typing import Any, Iterable, Optional, Sequence, Union
import zlib

from preprocessing import features
from preprocessing import history as history_rule
from preprocessing import ingest_parse
from preprocessing import typed_config

INT64_MAX = (1 << 63) - 1
# The id and time lists of a history; behaviour types are checked apart
# (optional in a tf.Example, all pv in a rank request without them).
HISTORY_KEYS = (features.HIST_ITEM_IDS.name, features.HIST_CATEGORY_IDS.name,
                features.HIST_TIMESTAMPS.name)
TYPES_KEY = features.HIST_BEHAVIOR_TYPES.name


class RequestError(ValueError):
  """A request that must not be sent; the message says what is wrong."""


class LogError(RequestError):
  """The behaviour log cannot give a history: a row ingestion would reject
  (named by file and line, with ingestion's reason), or an unreadable file."""


def _int_list(name: str, values: Any) -> tuple[int, ...]:
  """Validates a list of non-negative int64 values (no bools, floats, str)."""
  if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
    raise RequestError(f"{name} must be a list of integers, got {values!r}")
  result = []
  for i, value in enumerate(values):
    result.append(int64_value(f"{name}[{i}]", value))
  return tuple(result)


def int64_value(name: str, value: Any) -> int:
  """Non-negative int64 `value` (no bools, floats, str), or RequestError."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise RequestError(
        f"{name} must be an integer, got {value!r} ({type(value).__name__})")
  value = int(value)
  if value < 0:
    raise RequestError(f"{name} must be >= 0, got {value}")
  if value > INT64_MAX:
    raise RequestError(f"{name} does not fit in int64: {value}")
  return value


def _check_history(item_ids, category_ids, timestamps, before, max_seq_len,
                   what):
  """Common rules of a history: equal lengths, <= max_seq_len, sorted, past."""
  lengths = {features.HIST_ITEM_IDS.name: len(item_ids),
             features.HIST_CATEGORY_IDS.name: len(category_ids),
             features.HIST_TIMESTAMPS.name: len(timestamps)}
  if len(set(lengths.values())) != 1:
    raise RequestError(f"{what}: history lengths differ: {lengths}")
  if len(item_ids) > max_seq_len:
    raise RequestError(
        f"{what}: history has {len(item_ids)} behaviours, more than "
        f"max_seq_len={max_seq_len}; send the most recent {max_seq_len}")
  if any(a > b for a, b in zip(timestamps, timestamps[1:])):
    raise RequestError(f"{what}: hist_timestamps must be oldest first")
  if timestamps and timestamps[-1] >= before:
    raise RequestError(
        f"{what}: every behaviour must be strictly before the request "
        f"({before}); the last is at {timestamps[-1]}")


def _check_max_seq_len(max_seq_len):
  try:
    typed_config.max_seq_len_value(max_seq_len)
  except typed_config.ConfigError as error:
    raise RequestError(str(error)) from None


def _behavior_types(values, length: int, what: str) -> tuple[int, ...]:
  """Validated behaviour type codes, one per behaviour."""
  types = _int_list(TYPES_KEY, values)
  if len(types) != length:
    raise RequestError(
        f"{what}: {len(types)} {TYPES_KEY} for {length} behaviours")
  if any(t >= len(features.BEHAVIOR_TYPES) for t in types):
    raise RequestError(
        f"{what}: {TYPES_KEY} must index {features.BEHAVIOR_TYPES}, got "
        f"{sorted(set(types))}")
  return types


@dataclasses.dataclass(frozen=True)
class RankRequest:
  """One user's history and N candidates for the `rank` signature.

  Constructing it validates it (RequestError); fields become tuples of int.
  `hist_behavior_types` are the ingestion's codes (index into
  features.BEHAVIOR_TYPES); None (a log without types) sends pv for every
  behaviour, as ingestion and the Transform count them.
  """

  hist_item_ids: Sequence[int]
  hist_category_ids: Sequence[int]
  hist_timestamps: Sequence[int]
  item_ids: Sequence[int]
  category_ids: Sequence[int]
  request_timestamp: int
  max_seq_len: int = features.DEFAULT_MAX_SEQ_LEN
  hist_behavior_types: Optional[Sequence[int]] = None

  def __post_init__(self):
    _check_max_seq_len(self.max_seq_len)
    for name in HISTORY_KEYS + (features.RANK_ITEM_IDS_KEY,
                                features.RANK_CATEGORY_IDS_KEY):
      object.__setattr__(self, name, _int_list(name, getattr(self, name)))
    object.__setattr__(self, "request_timestamp", int64_value(
        features.RANK_REQUEST_TIMESTAMP_KEY, self.request_timestamp))
    if not self.item_ids:
      raise RequestError("rank request: no candidates (item_ids is empty)")
    if len(self.item_ids) != len(self.category_ids):
      raise RequestError(
          f"rank request: {len(self.item_ids)} item_ids but "
          f"{len(self.category_ids)} category_ids")
    _check_history(self.hist_item_ids, self.hist_category_ids,
                   self.hist_timestamps, self.request_timestamp,
                   self.max_seq_len, "rank request")
    types = self.hist_behavior_types
    if types is None:
      types = history_rule.rank_behavior_types(None, len(self.hist_item_ids))
    object.__setattr__(self, "hist_behavior_types", _behavior_types(
        types, len(self.hist_item_ids), "rank request"))

  def inputs(self) -> dict[str, Any]:
    """Signature input name -> list of ints (int for the scalar), in
    features.RANK_INPUT_NAMES order."""
    values = {
        features.RANK_ITEM_IDS_KEY: list(self.item_ids),
        features.RANK_CATEGORY_IDS_KEY: list(self.category_ids),
        features.RANK_REQUEST_TIMESTAMP_KEY: self.request_timestamp,
    }
    for feature in features.RANK_HISTORY_FEATURES:
      values[feature.name] = list(getattr(self, feature.name))
    return {name: values[name] for name in features.RANK_INPUT_NAMES}


@dataclasses.dataclass(frozen=True)
class ExampleRequest:
  """One impression for `serving_default`: a tf.Example without a label.

  `hist_behavior_types` (indices into features.BEHAVIOR_TYPES) is optional,
  as in training data without types. Constructing it validates it.
  """

  user_id: int
  item_id: int
  category_id: int
  timestamp: int
  hist_item_ids: Sequence[int]
  hist_category_ids: Sequence[int]
  hist_timestamps: Sequence[int]
  hist_behavior_types: Optional[Sequence[int]] = None
  max_seq_len: int = features.DEFAULT_MAX_SEQ_LEN

  def __post_init__(self):
    _check_max_seq_len(self.max_seq_len)
    for name in ("user_id", "item_id", "category_id", "timestamp"):
      object.__setattr__(self, name, int64_value(name, getattr(self, name)))
    for name in HISTORY_KEYS:
      object.__setattr__(self, name, _int_list(name, getattr(self, name)))
    _check_history(self.hist_item_ids, self.hist_category_ids,
                   self.hist_timestamps, self.timestamp, self.max_seq_len,
                   "example")
    if self.hist_behavior_types is not None:
      object.__setattr__(self, "hist_behavior_types", _behavior_types(
          self.hist_behavior_types, len(self.hist_item_ids), "example"))

  def feature_values(self) -> dict[str, list[int]]:
    """Feature name -> int64 values, as in the training tf.Examples."""
    values = {
        features.USER_ID.name: [self.user_id],
        features.ITEM_ID.name: [self.item_id],
        features.CATEGORY_ID.name: [self.category_id],
        features.TIMESTAMP.name: [self.timestamp],
        features.HIST_ITEM_IDS.name: list(self.hist_item_ids),
        features.HIST_CATEGORY_IDS.name: list(self.hist_category_ids),
        features.HIST_TIMESTAMPS.name: list(self.hist_timestamps),
    }
    if self.hist_behavior_types is not None:
      values[features.HIST_BEHAVIOR_TYPES.name] = list(
          self.hist_behavior_types)
    return values


def examples_for_candidates(rank: RankRequest,
                            user_id: int) -> list[ExampleRequest]:
  """The serving_default equivalent of a rank request: one example each."""
  return [
      ExampleRequest(
          user_id=user_id, item_id=item, category_id=category,
          timestamp=rank.request_timestamp,
          hist_item_ids=rank.hist_item_ids,
          hist_category_ids=rank.hist_category_ids,
          hist_timestamps=rank.hist_timestamps,
          hist_behavior_types=rank.hist_behavior_types,
          max_seq_len=rank.max_seq_len)
      for item, category in zip(rank.item_ids, rank.category_ids)
  ]


def history_from_rows(rows: Iterable[Union[str, bytes]], user_id: int,
                      request_timestamp: int,
                      max_seq_len: int = features.DEFAULT_MAX_SEQ_LEN,
                      source: str = "row",
                      bounds: Optional[ingest_parse.TimestampBounds] = None,
                      rejected: Optional[list] = None,
                      ) -> tuple[list[int], ...]:
  """The point-in-time history of `user_id` from Taobao-format log lines.

  Ingestion's rule (`preprocessing.history`): rows parsed and validated as
  ingestion does, the user's behaviours strictly before `request_timestamp`,
  same-second behaviours ordered by (item, category, type), the most recent
  `max_seq_len`, oldest first.

  Args:
    rows: raw lines `user_id,item_id,category_id,behavior_type,timestamp`,
      str or bytes (bytes that are not UTF-8 are a bad_encoding row).
    user_id: whose history.
    request_timestamp: Unix seconds of the request, within `bounds`.
    max_seq_len: how many of the most recent behaviours to keep.
    source: how to name a row in errors ("<source> <row number>").
    bounds: valid timestamps, as ingestion's; default up to one day after now.
    rejected: None: a row that ingestion would reject raises LogError naming
      it and the reason. A list: such rows are skipped, as ingestion skips
      them, and appended to it as ingest_parse.Reject (source "<source> <n>").

  Returns:
    (item_ids, category_ids, timestamps, behavior_types) lists.
  """
  return _history_from_located_rows(
      ((f"{source} {n}", row) for n, row in enumerate(rows, start=1)),
      user_id, request_timestamp, max_seq_len, bounds, rejected)


def history_from_log(pattern: str, user_id: int, request_timestamp: int,
                     max_seq_len: int = features.DEFAULT_MAX_SEQ_LEN,
                     bounds: Optional[ingest_parse.TimestampBounds] = None,
                     rejected: Optional[list] = None) -> tuple[list[int], ...]:
  """`history_from_rows` over the lines of the files matching `pattern`
  (read by `read_log_lines`; rows are named "path:line")."""
  return _history_from_located_rows(
      read_log_lines(pattern), user_id, request_timestamp, max_seq_len,
      bounds, rejected)


def _history_from_located_rows(located_rows, user_id, request_timestamp,
                               max_seq_len, bounds=None, rejected=None):
  _check_max_seq_len(max_seq_len)
  user_id = int64_value("user_id", user_id)
  request_timestamp = int64_value("request_timestamp", request_timestamp)
  bounds = ingest_parse.TimestampBounds.up_to_now() if bounds is None else bounds
  if not bounds.min_timestamp <= request_timestamp <= bounds.max_timestamp:
    # Ingestion rejects an impression at such a time (bad_timestamp).
    raise RequestError(
        f"request_timestamp={request_timestamp} outside [{bounds.min_timestamp}"
        f", {bounds.max_timestamp}] (Unix seconds)")

  def behaviors():
    for where, row in located_rows:
      if not isinstance(row, (str, bytes)):
        raise RequestError(
            f"{where}: a row must be a log line (str or bytes), got "
            f"{type(row).__name__}")
      result = history_rule.parse_behavior_line(row, where, bounds)
      if isinstance(result, ingest_parse.Reject):
        if rejected is None:
          raise LogError(f"{where}: {result.reason}: {result.detail}")
        rejected.append(result)
      else:
        yield result

  rows = history_rule.user_history(behaviors(), user_id, request_timestamp,
                                   max_seq_len)
  return tuple(rows[:, column].tolist() for column in (
      history_rule.ITEM, history_rule.CATEGORY, history_rule.TS,
      history_rule.TYPE))


def read_log_lines(pattern: str):
  """(path:line, line bytes) of every line of the files matching `pattern`,
  split as ingestion splits them (ingest_parse.iter_lines); .gz is decompressed.

  Raises LogError for no match or a file that cannot be read to its end
  (a truncated .gz), naming the file.
  """
  paths = sorted(glob.glob(pattern))
  if not paths:
    raise LogError(f"no behaviour log matches {pattern!r}")
  for path in paths:
    opener = gzip.open if path.endswith(".gz") else open
    try:
      with opener(path, "rb") as f:
        for number, line in enumerate(ingest_parse.iter_lines(f), start=1):
          yield f"{path}:{number}", line
    except (OSError, EOFError, zlib.error) as error:
      raise LogError(f"{path}: cannot read it to its end: {error}") from None
