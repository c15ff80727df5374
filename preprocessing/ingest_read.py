"""Ingestion, stage 1 in Beam: raw files -> parsed rows and dead letters.

Each row is parsed by `preprocessing.ingest_parse` (the rules, no Beam);
this module reads the files and counts what it read for the summary
(`preprocessing.ingest_summary`). The job that chains the stages is
`preprocessing.ingest_job`.

Files. Input globs are expanded in the driver with Beam's `FileSystems` (a
pattern matching no file is an error, not an empty input), so local paths,
gs://, s3:// (apache-beam[aws]) and hdfs:// all work. CSV files are read
whole by one task each (`_ReadWholeFiles`): `.gz` and `.bz2` are decompressed
to their end before any line is used, so a truncated or corrupt file is one
``corrupt_file`` dead letter (and `ingest_job.run` fails naming it), never a partial
read; lines end in \n, \r\n or \r. TensorFlow reads the TFRecords later: for s3:// or hdfs://
call `register_tf_filesystems` (imports tensorflow_io) first.
"""

from __future__ import annotations

import bz2
import gzip
import json
import zlib
from typing import Any, Sequence

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from preprocessing import ingest_parse

# Summary counts of the rows read (summary.json keys).
ROWS_READ = "rows_read"
ROWS_VALID = "rows_valid"
ROWS_REJECTED = "rows_rejected"
HEADER_LINES = "header_lines"



class IngestionError(Exception):
  """A job that cannot run or whose output must not be used (bad input, an
  occupied output_dir ...): the CLI prints it as one line."""


class NoMatchError(IngestionError, FileNotFoundError):
  """An input pattern matches no file."""


def expand_patterns(patterns: Sequence[str]) -> list[str]:
  """Globs -> sorted file paths; a pattern matching nothing is an error."""
  results = FileSystems.match(list(patterns))
  paths = []
  for pattern, result in zip(patterns, results):
    matched = [m.path for m in result.metadata_list]
    if not matched:
      raise NoMatchError(f"no file matches {pattern!r}")
    paths.extend(matched)
  return sorted(set(paths))


def register_tf_filesystems(paths: Sequence[str]) -> None:
  """Imports tensorflow_io when a path needs it for TF's gfile (s3, hdfs)."""
  if any(p.startswith(("s3://", "hdfs://")) for p in paths):
    # Only for such paths: tensorflow_io (seconds, all of TensorFlow) registers
    # TF's s3 and hdfs filesystems on import.
    import tensorflow_io  # pylint: disable=g-import-not-at-top,unused-import


class _ParseRows(beam.DoFn):
  """(source, raw line or Parquet record) -> event | Reject (tagged) | header."""

  REJECTS = "rejects"
  HEADERS = "headers"

  def __init__(self, kind: ingest_parse.RowKind, bounds: ingest_parse.TimestampBounds):
    self._kind = kind
    self._bounds = bounds
    self._read = beam.metrics.Metrics.counter(
        ingest_parse.METRICS_NAMESPACE, f"{ROWS_READ}_{kind.name}"
    )
    self._rejected = beam.metrics.Metrics.counter(
        ingest_parse.METRICS_NAMESPACE, f"{ROWS_REJECTED}_{kind.name}"
    )

  def process(self, element):
    source, raw = element
    if isinstance(raw, (str, bytes)):
      result = ingest_parse.parse_line(raw, source, self._kind, self._bounds)
    else:
      result = ingest_parse.parse_record(raw, source, self._kind, self._bounds)
    if isinstance(result, ingest_parse.Header):
      yield beam.pvalue.TaggedOutput(self.HEADERS, source)
      return
    self._read.inc()
    if isinstance(result, ingest_parse.Reject):
      self._rejected.inc()
      yield beam.pvalue.TaggedOutput(self.REJECTS, result)
    else:
      # The raw line travels along only where a later step may reject it.
      if self._kind.name == ingest_parse.MOVIELENS_RATING_ROWS.name:
        yield result, raw, source
      else:
        yield result


def open_decompressed(path: str):
  """A binary stream of the file's content; .gz and .bz2 are decompressed.

  Python's own gzip/bz2 readers, not Beam's: they raise at the end of a
  truncated stream and check gzip's CRC and length, where Beam's reader
  returns what it got.
  """

  raw = FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)
  if path.endswith(".gz"):
    return gzip.GzipFile(fileobj=raw, mode="rb")
  if path.endswith(".bz2"):
    return bz2.BZ2File(raw, mode="rb")
  return raw


class CorruptFileError(IngestionError, IOError):
  """An input file could not be read to its end."""


def verify_readable(path: str) -> None:
  """Reads a compressed file to its end; raises CorruptFileError if it cannot."""
  if not path.endswith((".gz", ".bz2")):
    return
  try:
    with open_decompressed(path) as stream:
      while stream.read(1 << 20):
        pass
  except (OSError, EOFError, zlib.error) as error:
    raise CorruptFileError(
        f"{path}: {type(error).__name__}: {error}"
    ) from None


class _ReadWholeFiles(beam.DoFn):
  """path -> (path, raw line bytes) for every line of the file, or nothing
  but one `corrupt_file` Reject (tagged) when the file cannot be read whole.

  A compressed file is decompressed to its end once before any of its lines
  is emitted (a second pass then streams the lines), so a truncated .gz never
  yields a partial file. Lines are bytes: invalid UTF-8 becomes a reject
  instead of a crash. One file is one task: files are not split into ranges.
  """

  CORRUPT = "corrupt"

  def __init__(self, kind: ingest_parse.RowKind):
    self._kind = kind
    self._read = beam.metrics.Metrics.counter(
        ingest_parse.METRICS_NAMESPACE, f"{ROWS_READ}_{kind.name}"
    )
    self._rejected = beam.metrics.Metrics.counter(
        ingest_parse.METRICS_NAMESPACE, f"{ROWS_REJECTED}_{kind.name}"
    )

  def process(self, path: str):
    try:
      verify_readable(path)
    except CorruptFileError as error:
      self._read.inc()
      self._rejected.inc()
      yield beam.pvalue.TaggedOutput(
          self.CORRUPT,
          ingest_parse.Reject(ingest_parse.CORRUPT_FILE, "", path, str(error)),
      )
      return
    with open_decompressed(path) as stream:
      for line in ingest_parse.iter_lines(stream):
        yield path, line


class LookupMovie(beam.DoFn):
  """(Rating, raw row, source) -> its Behavior and Impression (tagged) or a Reject."""

  IMPRESSIONS = "impressions"
  REJECTS = "rejects"

  def process(self, element, movie_categories):
    rating, raw, source = element
    if isinstance(raw, bytes):
      line = raw.decode("utf-8")  # it parsed, so it is valid UTF-8
    elif isinstance(raw, str):
      line = raw
    else:
      line = json.dumps(dict(raw), sort_keys=True, default=str)
    result = ingest_parse.rating_to_events(rating, movie_categories, line, source)
    if isinstance(result, ingest_parse.Reject):
      yield beam.pvalue.TaggedOutput(self.REJECTS, result)
      return
    behavior, impression = result
    yield behavior
    yield beam.pvalue.TaggedOutput(self.IMPRESSIONS, impression)


class Parsed:
  """The outputs of reading one kind of file."""

  def __init__(self, events, rejects, stats):
    self.events = events
    self.rejects = rejects
    self.stats = stats


def read_rows(
    pipeline: beam.Pipeline,
    label: str,
    patterns: Sequence[str],
    kind: ingest_parse.RowKind,
    parquet: bool,
    bounds: ingest_parse.TimestampBounds,
) -> Parsed:
  """Reads and parses every file of `patterns` as rows of `kind` (Parquet
  records if `parquet`, else CSV files read whole), timestamps within
  `bounds`."""
  paths = expand_patterns(patterns)
  files = pipeline | f"{label}Files" >> beam.Create(paths)
  corrupt = []
  if parquet:
    raw = files | f"{label}ReadParquet" >> beam.io.ReadAllFromParquet(
        with_filename=True
    )
  else:
    read = files | f"{label}ReadText" >> beam.ParDo(
        _ReadWholeFiles(kind)
    ).with_outputs(_ReadWholeFiles.CORRUPT, main="lines")
    raw = read["lines"]
    corrupt = [read[_ReadWholeFiles.CORRUPT]]
  parsed = raw | f"{label}Parse" >> beam.ParDo(
      _ParseRows(kind, bounds)
  ).with_outputs(_ParseRows.REJECTS, _ParseRows.HEADERS, main="events")
  lines = raw | f"{label}CountRaw" >> beam.combiners.Count.Globally()
  headers = parsed[_ParseRows.HEADERS] | f"{label}CountHeaders" >> (
      beam.combiners.Count.Globally()
  )
  stats = [
      (lines | f"{label}ReadStat" >> beam.Map(lambda n: (ROWS_READ, n))),
      (headers | f"{label}HeaderStat" >> beam.Map(lambda n: (HEADER_LINES, n))),
      # A header is not a row read.
      (headers | f"{label}HeaderUnread" >> beam.Map(lambda n: (ROWS_READ, -n))),
  ]
  rejects = parsed[_ParseRows.REJECTS]
  if corrupt:
    # A corrupt file counts as one row read and rejected.
    stats.append(
        corrupt[0]
        | f"{label}CountCorrupt" >> beam.combiners.Count.Globally()
        | f"{label}CorruptStat" >> beam.Map(lambda n: (ROWS_READ, n))
    )
    rejects = (rejects, corrupt[0]) | f"{label}AllRejects" >> beam.Flatten()
  stats = tuple(stats) | f"{label}Stats" >> beam.Flatten()
  return Parsed(parsed["events"], rejects, stats)


def count_valid(label: str, events) -> Any:
  return (
      events
      | f"{label}CountValid" >> beam.combiners.Count.Globally()
      | f"{label}ValidStat" >> beam.Map(lambda n: (ROWS_VALID, n))
  )
