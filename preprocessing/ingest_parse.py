"""Ingestion, stage 1: raw log rows parsed and validated into typed events or
reject records (dead letters). No Beam: the serving client parses its
behaviour logs with these same rules (`preprocessing.history`); the Beam
reading is `preprocessing.ingest_read`.

Three input formats share one path (see `INPUT_FORMATS`):

* ``behavior``: the Taobao UserBehavior CSV, no header,
  ``user_id,item_id,category_id,behavior_type,timestamp``.
* ``impressions``: a labelled impression CSV with the header
  ``user_id,item_id,category_id,timestamp,clicked`` plus a behaviour log as
  above for the histories.
* ``movielens``: ``ratings.csv`` (``userId,movieId,rating,timestamp``) and
  ``movies.csv`` (``movieId,title,genres``). A rating is both a behaviour of
  the user's history and an impression whose label is ``rating >= 4``; the
  category is the movie's first genre (`genre_category_id`). MovieLens has no
  behaviour types.

Every raw row ends up either as an event (`Behavior`, `Impression`,
`MovieGenre`, `Rating`) or as a `Reject` with one reason from the closed set
`REJECT_REASONS`, the original line and its source file: nothing is dropped in
silence. A header line (only where the format has one, recognised wherever it
appears in a file, so a file without its header loses no row) is neither read
nor rejected; it is counted apart as ``header_lines``.

Timestamps are Unix seconds and must lie in ``[min_timestamp, max_timestamp]``
of a `TimestampBounds` (default: 1990-01-01 up to one day after the time the
pipeline was built), so a negative, zero, millisecond or far-future timestamp
is a ``bad_timestamp`` reject. The upper bound is fixed once per run and passed
to every worker, so all workers judge a row the same way.

Lines end in ``\n``, ``\r\n`` or a lone ``\r`` (`iter_lines`); a UTF-8
byte-order mark before a file's first line is dropped.

Parquet input is read as rows keyed by the same column names as the CSV
header (``behavior`` Parquet uses the column names above); the "original line"
of a Parquet row in a reject is its JSON.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import re
import time
import zlib
from typing import Any, Iterator, Mapping, NamedTuple, Optional, Sequence, Union

from preprocessing import features
from preprocessing import typed_config

# The Beam counter namespace of every ingestion stage.
METRICS_NAMESPACE = "eta_ingestion"

# Reject reasons: a closed set; a test checks every one can be produced.
BAD_ENCODING = "bad_encoding"
EMPTY_LINE = "empty_line"
WRONG_COLUMN_COUNT = "wrong_column_count"
MISSING_FIELD = "missing_field"
NON_NUMERIC_ID = "non_numeric_id"
NEGATIVE_ID = "negative_id"
ID_OUT_OF_RANGE = "id_out_of_range"
BAD_TIMESTAMP = "bad_timestamp"
UNKNOWN_BEHAVIOR_TYPE = "unknown_behavior_type"
BAD_LABEL = "bad_label"
BAD_RATING = "bad_rating"
UNKNOWN_ITEM = "unknown_item"
# A whole input file that cannot be read to its end (a truncated or corrupt
# .gz): one reject for the file, none of its rows used.
CORRUPT_FILE = "corrupt_file"

REJECT_REASONS: tuple[str, ...] = (
    BAD_ENCODING,
    EMPTY_LINE,
    WRONG_COLUMN_COUNT,
    MISSING_FIELD,
    NON_NUMERIC_ID,
    NEGATIVE_ID,
    ID_OUT_OF_RANGE,
    BAD_TIMESTAMP,
    UNKNOWN_BEHAVIOR_TYPE,
    BAD_LABEL,
    BAD_RATING,
    UNKNOWN_ITEM,
    CORRUPT_FILE,
)

INPUT_FORMATS: tuple[str, ...] = ("behavior", "impressions", "movielens")

BEHAVIOR_COLUMNS: tuple[str, ...] = (
    "user_id", "item_id", "category_id", "behavior_type", "timestamp"
)
IMPRESSION_COLUMNS: tuple[str, ...] = (
    "user_id", "item_id", "category_id", "timestamp", "clicked"
)
MOVIELENS_RATING_COLUMNS: tuple[str, ...] = (
    "userId", "movieId", "rating", "timestamp"
)
MOVIELENS_MOVIE_COLUMNS: tuple[str, ...] = ("movieId", "title", "genres")

# A rating at or above this is a click.
MOVIELENS_CLICK_RATING = 4.0
MOVIELENS_MIN_RATING = 0.5
MOVIELENS_MAX_RATING = 5.0

# The MovieLens genres in the order of the dataset's README: category id is
# the 1-based position, fixed across dataset versions. A genre not in the list
# (a later dataset adding one) gets a stable id from CRC32 above the list's
# range, so ids never depend on which genres one file happens to contain.
MOVIELENS_GENRES: tuple[str, ...] = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical",
    "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western", "IMAX",
    "(no genres listed)",
)
_UNLISTED_GENRE_BASE = 1000

# 1990-01-01T00:00:00Z: older timestamps in click logs are clock errors.
DEFAULT_MIN_TIMESTAMP = 631_152_000
# A timestamp more than this far after the run's start is a clock error.
FUTURE_TOLERANCE_SECONDS = 86_400
_INT64_MAX = (1 << 63) - 1
_INTEGER = re.compile(r"[+-]?[0-9]+")

_BEHAVIOR_TYPE_INDEX = {name: i for i, name in enumerate(features.BEHAVIOR_TYPES)}
# Behaviours without a type (MovieLens) carry this index; never written out.
NO_BEHAVIOR_TYPE = -1


class Behavior(NamedTuple):
  """One behaviour of a user's history."""

  user_id: int
  item_id: int
  category_id: int
  behavior_type: int  # index into features.BEHAVIOR_TYPES, or NO_BEHAVIOR_TYPE
  timestamp: int


class Impression(NamedTuple):
  """One candidate shown to a user, with its label."""

  user_id: int
  item_id: int
  category_id: int
  timestamp: int
  label: int


class MovieGenre(NamedTuple):
  """A movies.csv row reduced to what ingestion needs."""

  movie_id: int
  category_id: int


class Rating(NamedTuple):
  """A MovieLens rating before its movie's category is looked up."""

  user_id: int
  movie_id: int
  rating: float
  timestamp: int


class Reject(NamedTuple):
  """A raw row that failed parsing or validation (a dead letter)."""

  reason: str  # one of REJECT_REASONS
  line: str
  source: str
  detail: str

  def to_json(self) -> str:
    return json.dumps(self._asdict(), sort_keys=True)


class Header(NamedTuple):
  """A header line: neither read nor rejected, counted apart."""

  source: str


@dataclasses.dataclass(frozen=True)
class TimestampBounds:
  """Valid Unix-second range of every timestamp, inclusive both ends."""

  min_timestamp: int = DEFAULT_MIN_TIMESTAMP
  max_timestamp: int = _INT64_MAX

  def __post_init__(self):
    for name in ("min_timestamp", "max_timestamp"):  # Unix seconds
      typed_config.check_int(self, name, -_INT64_MAX - 1, _INT64_MAX)
    if self.min_timestamp > self.max_timestamp:
      raise ValueError(
          f"min_timestamp {self.min_timestamp} > max_timestamp "
          f"{self.max_timestamp}"
      )

  @classmethod
  def up_to_now(cls, now: Optional[float] = None) -> "TimestampBounds":
    """1990-01-01 up to one day after `now` (default: the wall clock)."""
    now = time.time() if now is None else now
    return cls(DEFAULT_MIN_TIMESTAMP, int(now) + FUTURE_TOLERANCE_SECONDS)


Fields = Sequence[Any]
RowResult = Union[Behavior, Impression, MovieGenre, Rating, Reject, Header]


class _Invalid(Exception):

  def __init__(self, reason: str, detail: str):
    super().__init__(detail)
    self.reason = reason
    self.detail = detail


def genre_category_id(genre: str) -> int:
  """Stable category id of a MovieLens genre (see MOVIELENS_GENRES)."""
  try:
    return MOVIELENS_GENRES.index(genre) + 1
  except ValueError:
    return _UNLISTED_GENRE_BASE + zlib.crc32(genre.encode("utf-8")) % 1_000_000


def _text(value: Any) -> str:
  return value.strip() if isinstance(value, str) else str(value)


def _require(fields: Fields, names: Sequence[str]) -> None:
  if len(fields) != len(names):
    raise _Invalid(
        WRONG_COLUMN_COUNT, f"expected {len(names)} columns, got {len(fields)}"
    )
  for name, value in zip(names, fields):
    if value is None or (isinstance(value, str) and not value.strip()):
      raise _Invalid(MISSING_FIELD, f"{name} is empty")


def _parse_int(value: Any, name: str, non_numeric_reason: str) -> int:
  if isinstance(value, bool):
    raise _Invalid(non_numeric_reason, f"{name}={value!r} is not an integer")
  if isinstance(value, int):
    number = value
  else:
    text = _text(value)
    if not _INTEGER.fullmatch(text):
      raise _Invalid(non_numeric_reason, f"{name}={text!r} is not an integer")
    number = int(text)
  return number


def _parse_id(value: Any, name: str) -> int:
  number = _parse_int(value, name, NON_NUMERIC_ID)
  if number < 0:
    raise _Invalid(NEGATIVE_ID, f"{name}={number} is negative")
  if number > _INT64_MAX:
    raise _Invalid(ID_OUT_OF_RANGE, f"{name}={number} exceeds int64")
  return number


def _parse_timestamp(value: Any, bounds: TimestampBounds) -> int:
  number = _parse_int(value, "timestamp", BAD_TIMESTAMP)
  if not bounds.min_timestamp <= number <= bounds.max_timestamp:
    raise _Invalid(
        BAD_TIMESTAMP,
        f"timestamp={number} outside [{bounds.min_timestamp}, "
        f"{bounds.max_timestamp}]",
    )
  return number


def _parse_behavior_type(value: Any) -> int:
  text = _text(value)
  try:
    return _BEHAVIOR_TYPE_INDEX[text]
  except KeyError:
    raise _Invalid(
        UNKNOWN_BEHAVIOR_TYPE,
        f"behavior_type={text!r} not in {features.BEHAVIOR_TYPES}",
    ) from None


def _parse_label(value: Any) -> int:
  text = _text(value)
  if text not in ("0", "1"):
    raise _Invalid(BAD_LABEL, f"clicked={text!r} is not 0 or 1")
  return int(text)


def _parse_rating(value: Any) -> float:
  try:
    rating = float(_text(value))
  except ValueError:
    raise _Invalid(BAD_RATING, f"rating={value!r} is not a number") from None
  if not (
      math.isfinite(rating)
      and MOVIELENS_MIN_RATING <= rating <= MOVIELENS_MAX_RATING
  ):
    raise _Invalid(
        BAD_RATING,
        f"rating={rating} outside [{MOVIELENS_MIN_RATING}, "
        f"{MOVIELENS_MAX_RATING}]",
    )
  return rating


def parse_behavior_fields(fields: Fields, bounds: TimestampBounds) -> Behavior:
  _require(fields, BEHAVIOR_COLUMNS)
  return Behavior(
      user_id=_parse_id(fields[0], "user_id"),
      item_id=_parse_id(fields[1], "item_id"),
      category_id=_parse_id(fields[2], "category_id"),
      behavior_type=_parse_behavior_type(fields[3]),
      timestamp=_parse_timestamp(fields[4], bounds),
  )


def parse_impression_fields(
    fields: Fields, bounds: TimestampBounds
) -> Impression:
  _require(fields, IMPRESSION_COLUMNS)
  return Impression(
      user_id=_parse_id(fields[0], "user_id"),
      item_id=_parse_id(fields[1], "item_id"),
      category_id=_parse_id(fields[2], "category_id"),
      timestamp=_parse_timestamp(fields[3], bounds),
      label=_parse_label(fields[4]),
  )


def parse_rating_fields(fields: Fields, bounds: TimestampBounds) -> Rating:
  _require(fields, MOVIELENS_RATING_COLUMNS)
  return Rating(
      user_id=_parse_id(fields[0], "userId"),
      movie_id=_parse_id(fields[1], "movieId"),
      rating=_parse_rating(fields[2]),
      timestamp=_parse_timestamp(fields[3], bounds),
  )


def parse_movie_fields(fields: Fields, bounds: TimestampBounds) -> MovieGenre:
  del bounds  # movies.csv has no timestamp
  _require(fields, MOVIELENS_MOVIE_COLUMNS)
  first_genre = _text(fields[2]).split("|")[0].strip()
  if not first_genre:
    raise _Invalid(MISSING_FIELD, "genres has an empty first genre")
  return MovieGenre(
      movie_id=_parse_id(fields[0], "movieId"),
      category_id=genre_category_id(first_genre),
  )


@dataclasses.dataclass(frozen=True)
class RowKind:
  """How to split and parse one kind of raw file.

  Attributes:
    name: 'behavior', 'impression', 'movielens_rating' or 'movielens_movie'.
    columns: the column names (the CSV header when `has_header`, the Parquet
      column names always).
    has_header: the CSV files of this kind start with `columns` as a header.
    quoted: fields may be CSV-quoted (MovieLens titles contain commas).
  """

  name: str
  columns: tuple[str, ...]
  has_header: bool
  quoted: bool
  parse_fields: Any  # Callable[[Fields, TimestampBounds], event]

  def split_line(self, line: str) -> list[str]:
    line = line.rstrip("\r\n")
    if self.quoted and '"' in line:
      return next(csv.reader([line]))
    return line.split(",")

  def is_header(self, line: str) -> bool:
    return self.has_header and (
        tuple(f.strip() for f in line.strip().split(",")) == self.columns
    )


BEHAVIOR_ROWS = RowKind(
    "behavior", BEHAVIOR_COLUMNS, False, False, parse_behavior_fields
)
IMPRESSION_ROWS = RowKind(
    "impression", IMPRESSION_COLUMNS, True, False, parse_impression_fields
)
MOVIELENS_RATING_ROWS = RowKind(
    "movielens_rating", MOVIELENS_RATING_COLUMNS, True, False,
    parse_rating_fields,
)
MOVIELENS_MOVIE_ROWS = RowKind(
    "movielens_movie", MOVIELENS_MOVIE_COLUMNS, True, True, parse_movie_fields
)


UTF8_BOM = b"\xef\xbb\xbf"
_LINE_END = re.compile(rb"\r\n|\r|\n")


def iter_lines(stream: Any, chunk_size: int = 1 << 20) -> Iterator[bytes]:
  """The lines of a binary stream, without their ends, streamed in chunks.

  Any of ``\n``, ``\r\n`` and a lone ``\r`` ends a line (a log written with
  old Mac line ends would otherwise be one giant row); a final line without an
  end is still a line; a UTF-8 BOM at the start of the stream is dropped.
  """
  pending = b""
  first = True
  while True:
    chunk = stream.read(chunk_size)
    if not chunk:
      break
    data = pending + chunk
    # A chunk ending in \r may be the first half of a \r\n: hold it back.
    hold = b""
    if data.endswith(b"\r"):
      data, hold = data[:-1], b"\r"
    parts = _LINE_END.split(data)
    pending = parts.pop() + hold
    for line in parts:
      if first:
        line, first = _strip_bom(line), False
      yield line
  if first:
    pending = _strip_bom(pending)  # a file holding only a BOM has no line
  if pending:
    if pending.endswith(b"\r"):
      pending = pending[:-1]
    yield pending


def _strip_bom(line: bytes) -> bytes:
  return line[len(UTF8_BOM):] if line.startswith(UTF8_BOM) else line


def parse_line(
    line: Union[str, bytes], source: str, kind: RowKind, bounds: TimestampBounds
) -> RowResult:
  """Parses one CSV line of `kind` into an event, a Header or a Reject.

  `line` may be the raw bytes of the line: invalid UTF-8 is then a
  ``bad_encoding`` reject (with the line decoded leniently) instead of a crash.
  """
  if isinstance(line, bytes):
    try:
      line = line.decode("utf-8")
    except UnicodeDecodeError as error:
      return Reject(
          BAD_ENCODING, line.decode("utf-8", errors="replace"), source,
          str(error),
      )
  if not line.strip():
    return Reject(EMPTY_LINE, line, source, "blank line")
  if kind.is_header(line):
    return Header(source)
  try:
    return kind.parse_fields(kind.split_line(line), bounds)
  except _Invalid as invalid:
    return Reject(invalid.reason, line, source, invalid.detail)
  except csv.Error as error:
    return Reject(WRONG_COLUMN_COUNT, line, source, f"CSV error: {error}")


def parse_record(
    record: Mapping[str, Any],
    source: str,
    kind: RowKind,
    bounds: TimestampBounds,
) -> RowResult:
  """Parses one Parquet row (column name -> value) into an event or Reject."""
  missing = [c for c in kind.columns if c not in record]
  try:
    if missing:
      raise _Invalid(WRONG_COLUMN_COUNT, f"missing columns {missing}")
    return kind.parse_fields([record[c] for c in kind.columns], bounds)
  except _Invalid as invalid:
    line = json.dumps(dict(record), sort_keys=True, default=str)
    return Reject(invalid.reason, line, source, invalid.detail)


def rating_to_events(
    rating: Rating,
    movie_categories: Mapping[int, int],
    line: str,
    source: str,
) -> Union[tuple[Behavior, Impression], Reject]:
  """A rating -> (its behaviour, its impression), or a Reject (unknown movie).

  `line` and `source` are the rating's raw row, kept for the reject.
  """
  category = movie_categories.get(rating.movie_id)
  if category is None:
    return Reject(
        UNKNOWN_ITEM, line, source,
        f"movieId={rating.movie_id} is not in movies.csv",
    )
  behavior = Behavior(
      rating.user_id, rating.movie_id, category, NO_BEHAVIOR_TYPE,
      rating.timestamp,
  )
  impression = Impression(
      rating.user_id, rating.movie_id, category, rating.timestamp,
      int(rating.rating >= MOVIELENS_CLICK_RATING),
  )
  return behavior, impression
