"""Raw row parsing: every reject reason, headers, MovieLens genres, bounds."""

import json
import zlib

import pytest

from preprocessing import ingest_parse
from preprocessing.ingest_parse import (
    Behavior, Header, Impression, MovieGenre, Rating, Reject,
)

BOUNDS = ingest_parse.TimestampBounds(631_152_000, 1_800_000_000)
SRC = "gs://bucket/logs/20231114.csv"


def _behavior(line):
  return ingest_parse.parse_line(line, SRC, ingest_parse.BEHAVIOR_ROWS, BOUNDS)


def _impression(line):
  return ingest_parse.parse_line(line, SRC, ingest_parse.IMPRESSION_ROWS, BOUNDS)


def test_valid_behavior_row():
  assert _behavior("1,2,3,cart,1700000000") == Behavior(1, 2, 3, 1, 1700000000)
  # Windows line ending and surrounding spaces are tolerated.
  assert _behavior(" 7 ,8,9,buy, 1700000001\r") == Behavior(7, 8, 9, 3, 1700000001)


def test_valid_impression_row():
  assert _impression("5,6,7,1700000000,1") == Impression(5, 6, 7, 1700000000, 1)
  assert _impression("5,6,7,1700000000,0").label == 0


# (kind, line, expected reason), one per reason the kind can produce.
MALFORMED = [
    ("behavior", b"1,2,3,pv,17000\xff00000", ingest_parse.BAD_ENCODING),
    ("behavior", "", ingest_parse.EMPTY_LINE),
    ("behavior", "   ", ingest_parse.EMPTY_LINE),
    ("behavior", "1,2,3,pv", ingest_parse.WRONG_COLUMN_COUNT),
    ("behavior", "1,2,3,pv,1700000000,9", ingest_parse.WRONG_COLUMN_COUNT),
    ("behavior", "1,,3,pv,1700000000", ingest_parse.MISSING_FIELD),
    ("behavior", "1,2,3,,1700000000", ingest_parse.MISSING_FIELD),
    ("behavior", "u1,2,3,pv,1700000000", ingest_parse.NON_NUMERIC_ID),
    ("behavior", "1,2.5,3,pv,1700000000", ingest_parse.NON_NUMERIC_ID),
    ("behavior", "1,1_000,3,pv,1700000000", ingest_parse.NON_NUMERIC_ID),
    ("behavior", "1,2,-3,pv,1700000000", ingest_parse.NEGATIVE_ID),
    ("behavior", "1,9223372036854775808,3,pv,1700000000", ingest_parse.ID_OUT_OF_RANGE),
    ("behavior", "1,2,3,pv,-5", ingest_parse.BAD_TIMESTAMP),
    ("behavior", "1,2,3,pv,0", ingest_parse.BAD_TIMESTAMP),
    ("behavior", "1,2,3,pv,1700000000000", ingest_parse.BAD_TIMESTAMP),  # millis
    ("behavior", "1,2,3,pv,1800000001", ingest_parse.BAD_TIMESTAMP),  # future
    ("behavior", "1,2,3,pv,2023-11-14", ingest_parse.BAD_TIMESTAMP),
    ("behavior", "1,2,3,click,1700000000", ingest_parse.UNKNOWN_BEHAVIOR_TYPE),
    ("behavior", "1,2,3,PV,1700000000", ingest_parse.UNKNOWN_BEHAVIOR_TYPE),
    ("impression", "1,2,3,1700000000,2", ingest_parse.BAD_LABEL),
    ("impression", "1,2,3,1700000000,yes", ingest_parse.BAD_LABEL),
    ("movielens_rating", "1,2,5.5,1700000000", ingest_parse.BAD_RATING),
    ("movielens_rating", "1,2,nan,1700000000", ingest_parse.BAD_RATING),
    ("movielens_rating", "1,2,good,1700000000", ingest_parse.BAD_RATING),
    ("movielens_movie", '3,"Title, The (1999)",', ingest_parse.MISSING_FIELD),
    ("movielens_movie", "x3,Title,Drama", ingest_parse.NON_NUMERIC_ID),
]
KINDS = {
    "behavior": ingest_parse.BEHAVIOR_ROWS,
    "impression": ingest_parse.IMPRESSION_ROWS,
    "movielens_rating": ingest_parse.MOVIELENS_RATING_ROWS,
    "movielens_movie": ingest_parse.MOVIELENS_MOVIE_ROWS,
}


@pytest.mark.parametrize("kind,line,reason", MALFORMED)
def test_malformed_rows_are_rejected_with_the_reason_and_line(kind, line, reason):
  result = ingest_parse.parse_line(line, SRC, KINDS[kind], BOUNDS)
  assert isinstance(result, Reject), result
  assert result.reason == reason, result
  assert result.source == SRC
  expected_line = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
  assert result.line == expected_line
  assert json.loads(result.to_json())["reason"] == reason


def test_every_reason_is_produced_somewhere():
  """The closed set has no dead entries (unknown_item comes from the lookup,
  corrupt_file from reading a whole file: tests/test_build_examples.py)."""
  produced = {reason for _, _, reason in MALFORMED} | {
      ingest_parse.UNKNOWN_ITEM, ingest_parse.CORRUPT_FILE}
  assert produced == set(ingest_parse.REJECT_REASONS)


def test_headers_are_recognised_only_where_the_format_has_one():
  header = "user_id,item_id,category_id,timestamp,clicked"
  assert _impression(header) == Header(SRC)
  assert ingest_parse.parse_line(
      "userId,movieId,rating,timestamp", SRC, ingest_parse.MOVIELENS_RATING_ROWS,
      BOUNDS,
  ) == Header(SRC)
  # The behaviour log has no header: such a line is a visible reject.
  assert _behavior("user_id,item_id,category_id,behavior_type,timestamp").reason == (
      ingest_parse.NON_NUMERIC_ID
  )


def test_movielens_rows_and_genres():
  assert ingest_parse.parse_line(
      "1,31,2.5,1260759144", SRC, ingest_parse.MOVIELENS_RATING_ROWS, BOUNDS
  ) == Rating(1, 31, 2.5, 1260759144)
  movie = ingest_parse.parse_line(
      '11,"American President, The (1995)",Comedy|Drama|Romance', SRC,
      ingest_parse.MOVIELENS_MOVIE_ROWS, BOUNDS,
  )
  assert movie == MovieGenre(11, 5)  # Comedy is the 5th listed genre
  assert ingest_parse.genre_category_id("Action") == 1
  assert ingest_parse.genre_category_id("(no genres listed)") == 20
  assert ingest_parse.genre_category_id("Cyberpunk") == (
      1000 + zlib.crc32(b"Cyberpunk") % 1_000_000
  )
  assert len(set(map(ingest_parse.genre_category_id, ingest_parse.MOVIELENS_GENRES))) == 20


def test_rating_to_events_clicks_at_four_and_rejects_unknown_movies():
  behavior, impression = ingest_parse.rating_to_events(
      Rating(1, 31, 4.0, 1260759144), {31: 8}, "1,31,4.0,1260759144", SRC
  )
  assert behavior == Behavior(1, 31, 8, ingest_parse.NO_BEHAVIOR_TYPE, 1260759144)
  assert impression == Impression(1, 31, 8, 1260759144, 1)
  _, low = ingest_parse.rating_to_events(Rating(1, 31, 3.5, 1), {31: 8}, "", SRC)
  assert low.label == 0
  reject = ingest_parse.rating_to_events(
      Rating(1, 99, 4.0, 1260759144), {31: 8}, "1,99,4.0,1260759144", SRC
  )
  assert reject == Reject(
      ingest_parse.UNKNOWN_ITEM, "1,99,4.0,1260759144", SRC,
      "movieId=99 is not in movies.csv",
  )


def test_parquet_records():
  kind = ingest_parse.BEHAVIOR_ROWS
  row = {"user_id": 1, "item_id": 2, "category_id": 3, "behavior_type": "fav",
         "timestamp": 1700000000}
  assert ingest_parse.parse_record(row, SRC, kind, BOUNDS) == Behavior(1, 2, 3, 2, 1700000000)
  missing = ingest_parse.parse_record(
      {k: v for k, v in row.items() if k != "item_id"}, SRC, kind, BOUNDS
  )
  assert missing.reason == ingest_parse.WRONG_COLUMN_COUNT
  assert json.loads(missing.line)["user_id"] == 1
  assert ingest_parse.parse_record({**row, "item_id": None}, SRC, kind, BOUNDS).reason == (
      ingest_parse.MISSING_FIELD
  )
  assert ingest_parse.parse_record({**row, "item_id": True}, SRC, kind, BOUNDS).reason == (
      ingest_parse.NON_NUMERIC_ID
  )


def test_timestamp_bounds():
  bounds = ingest_parse.TimestampBounds.up_to_now(now=1_700_000_000.7)
  assert bounds.max_timestamp == 1_700_086_400
  assert bounds.min_timestamp == 631_152_000  # 1990-01-01
  with pytest.raises(ValueError, match="min_timestamp"):
    ingest_parse.TimestampBounds(10, 5)
  with pytest.raises(TypeError):
    ingest_parse.TimestampBounds(1.5, 5)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 5, 1 << 20])
@pytest.mark.parametrize("data,lines", [
    (b"a\nb\n", [b"a", b"b"]),
    (b"a\r\nb\r\n", [b"a", b"b"]),
    (b"a\rb\r", [b"a", b"b"]),  # old Mac line ends
    (b"a\rb\r\nc\nd", [b"a", b"b", b"c", b"d"]),  # mixed, no final end
    (b"a\n\nb", [b"a", b"", b"b"]),  # a blank line stays (an empty_line reject)
    (b"a\r\r\n", [b"a", b""]),
    (b"\xef\xbb\xbfh\r\nx\xef\xbb\xbf\n", [b"h", b"x\xef\xbb\xbf"]),  # BOM only at the start
    (b"\xef\xbb\xbf", []),  # only a BOM: no line
    (b"", []),
])
def test_iter_lines_splits_on_every_line_end_across_chunk_boundaries(data, lines, chunk_size):
  import io

  assert list(ingest_parse.iter_lines(io.BytesIO(data), chunk_size)) == lines
  # The same as Python's universal newlines on the text.
  expected = data.decode("utf-8").lstrip("\ufeff").splitlines()
  assert [l.decode("utf-8") for l in lines] == expected


def test_a_header_after_a_bom_is_a_header():
  import io

  data = b"\xef\xbb\xbfuser_id,item_id,category_id,timestamp,clicked\r\n"
  (line,) = ingest_parse.iter_lines(io.BytesIO(data))
  assert _impression(line) == Header(SRC)
