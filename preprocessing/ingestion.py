"""The ingestion job: raw logs -> examples, dead letters and a summary.

Shared by the CLI (`preprocessing.build_examples`) and the TFX ExampleGen
executor (`preprocessing.example_gen`): `IngestionConfig` says what to read
and how to build; `expand_ingestion` adds the whole job to a Beam pipeline and
returns the train/eval example PCollections; `write_side_outputs` writes the
dead letters and `summary.json`; `read_summary` reads it back and checks that
every row read is accounted for; `run` does all of it as one job.

Counting. The summary is computed inside the pipeline from PCollections
(counts combined per name), not from Beam metrics, so it is the same on every
runner (portable runners need not report metrics). `rows_read` counts the raw
lines/records read minus header lines, counted on the read PCollection itself;
`rows_valid` and `rows_rejected` count the parser's two outputs (for MovieLens
after the movie lookup). `read_summary` asserts
``rows_read == rows_valid + rows_rejected``. The same numbers also go to Beam
counters (namespace ``eta_ingestion``) for monitoring.

Files. Input globs are expanded in the driver with Beam's `FileSystems` (a
pattern matching no file is an error, not an empty input), so local paths,
gs://, s3:// (apache-beam[aws]) and hdfs:// all work. CSV files are read
whole by one task each (`_ReadWholeFiles`): `.gz` and `.bz2` are decompressed
to their end before any line is used, so a truncated or corrupt file is one
``corrupt_file`` dead letter (and `run` fails naming it), never a partial
read; lines end in \n, \r\n or \r. TensorFlow reads the TFRecords later: for s3:// or hdfs://
call `register_tf_filesystems` (imports tensorflow_io) first.
"""

from __future__ import annotations

import bz2
import dataclasses
import datetime
import gzip
import json
import os
import posixpath
import statistics
import uuid
import zlib
from typing import Any, Mapping, Optional, Sequence

from absl import logging
import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from preprocessing import features
from preprocessing import raw_logs
from preprocessing import sequence_builder
from preprocessing import typed_config

FILE_TYPES: tuple[str, ...] = ("auto", "csv", "parquet")
SUMMARY_FILE = "summary.json"
REJECTED_DIR = "rejected"

ROWS_READ = "rows_read"
ROWS_VALID = "rows_valid"
ROWS_REJECTED = "rows_rejected"
HEADER_LINES = "header_lines"
_REJECT_PREFIX = "rejected:"
_METRICS_NAMESPACE = "eta_ingestion"


DEFAULT_LOCAL_BEAM_ARGS: tuple[str, ...] = (
    "--direct_running_mode=multi_processing",
    "--direct_num_workers=2",
)


class SummaryMismatchError(AssertionError):
  """The summary does not account for every row read."""


class IngestionError(Exception):
  """A job that cannot run or whose output must not be used (bad input, an
  occupied output_dir ...): the CLI prints it as one line."""


class NoMatchError(IngestionError, FileNotFoundError):
  """An input pattern matches no file."""


@dataclasses.dataclass(frozen=True)
class IngestionConfig:
  """What to read and how to build examples.

  Attributes:
    input_format: one of raw_logs.INPUT_FORMATS.
    input_patterns: globs of the main input: the behaviour log ('behavior'),
      the impression log ('impressions'), ratings.csv ('movielens').
    behavior_patterns: globs of the behaviour log for the histories
      ('impressions' only; required there).
    movies_patterns: globs of movies.csv ('movielens' only; required there).
    file_type: 'csv', 'parquet', or 'auto' (parquet iff a pattern ends in
      '.parquet').
    max_seq_len, min_history, eval_days, chunk_seconds: see
      sequence_builder.SequenceConfig.
    neg_per_pos: negatives per positive ('behavior' only).
    seed: negative-sampling seed.
    min_timestamp, max_timestamp: valid timestamp range (Unix seconds,
      inclusive); max None: one day after the config was made.
    eval_start_timestamp, impression_start_timestamp, impression_end_timestamp:
      see sequence_builder.SequenceConfig (the ExampleGen sets them per span).
    min_volume_ratio: an eval day whose behaviours, impressions or examples
      fall below this fraction of the median of the earlier days is a volume
      problem (`volume_problems`); 0 disables the check.
  """

  input_format: str
  input_patterns: tuple[str, ...]
  behavior_patterns: tuple[str, ...] = ()
  movies_patterns: tuple[str, ...] = ()
  file_type: str = "auto"
  max_seq_len: int = features.DEFAULT_MAX_SEQ_LEN
  min_history: int = 1
  eval_days: int = 1
  chunk_seconds: int = features.SECONDS_PER_DAY
  neg_per_pos: int = 1
  seed: int = 0
  min_timestamp: int = raw_logs.DEFAULT_MIN_TIMESTAMP
  max_timestamp: Optional[int] = None
  eval_start_timestamp: Optional[int] = None
  impression_start_timestamp: Optional[int] = None
  impression_end_timestamp: Optional[int] = None
  min_volume_ratio: float = 0.0

  def __post_init__(self):
    if self.input_format not in raw_logs.INPUT_FORMATS:
      raise ValueError(
          f"input_format={self.input_format!r} not in {raw_logs.INPUT_FORMATS}"
      )
    if self.file_type not in FILE_TYPES:
      raise ValueError(f"file_type={self.file_type!r} not in {FILE_TYPES}")
    for name in ("input_patterns", "behavior_patterns", "movies_patterns"):
      object.__setattr__(self, name, typed_config.strings_value(name, getattr(self, name)))
    if not self.input_patterns:
      raise ValueError("input_patterns is empty")
    if self.input_format == "impressions" and not self.behavior_patterns:
      raise ValueError("input_format='impressions' needs behavior_patterns")
    if self.input_format != "impressions" and self.behavior_patterns:
      raise ValueError(
          f"behavior_patterns is only read for 'impressions', not "
          f"{self.input_format!r}"
      )
    if self.input_format == "movielens" and not self.movies_patterns:
      raise ValueError("input_format='movielens' needs movies_patterns")
    if self.input_format != "movielens" and self.movies_patterns:
      raise ValueError("movies_patterns is only read for 'movielens'")
    object.__setattr__(self, "min_volume_ratio", typed_config.fraction_value(
        "min_volume_ratio", self.min_volume_ratio, high_open=True))  # 0: no check
    if self.max_timestamp is None:
      object.__setattr__(
          self, "max_timestamp", raw_logs.TimestampBounds.up_to_now().max_timestamp
      )
    # Validates the ranges and types the transforms will see.
    self.timestamp_bounds()
    self.sequence_config()
    sequence_builder.check_sampling_settings(self.neg_per_pos, self.seed)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "IngestionConfig":
    """Builds a config from a dict, rejecting keys it does not know."""
    return typed_config.from_dict(cls, values, "ingestion settings")

  def timestamp_bounds(self) -> raw_logs.TimestampBounds:
    return raw_logs.TimestampBounds(self.min_timestamp, self.max_timestamp)

  def sequence_config(self) -> sequence_builder.SequenceConfig:
    return sequence_builder.SequenceConfig(
        max_seq_len=self.max_seq_len,
        min_history=self.min_history,
        eval_days=self.eval_days,
        chunk_seconds=self.chunk_seconds,
        with_behavior_types=self.input_format != "movielens",
        eval_start_timestamp=self.eval_start_timestamp,
        impression_start_timestamp=self.impression_start_timestamp,
        impression_end_timestamp=self.impression_end_timestamp,
    )

  def is_parquet(self, patterns: Sequence[str]) -> bool:
    if self.file_type != "auto":
      return self.file_type == "parquet"
    return all(p.endswith(".parquet") for p in patterns)


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

  def __init__(self, kind: raw_logs.RowKind, bounds: raw_logs.TimestampBounds):
    self._kind = kind
    self._bounds = bounds
    self._read = beam.metrics.Metrics.counter(
        _METRICS_NAMESPACE, f"{ROWS_READ}_{kind.name}"
    )
    self._rejected = beam.metrics.Metrics.counter(
        _METRICS_NAMESPACE, f"{ROWS_REJECTED}_{kind.name}"
    )

  def process(self, element):
    source, raw = element
    if isinstance(raw, (str, bytes)):
      result = raw_logs.parse_line(raw, source, self._kind, self._bounds)
    else:
      result = raw_logs.parse_record(raw, source, self._kind, self._bounds)
    if isinstance(result, raw_logs.Header):
      yield beam.pvalue.TaggedOutput(self.HEADERS, source)
      return
    self._read.inc()
    if isinstance(result, raw_logs.Reject):
      self._rejected.inc()
      yield beam.pvalue.TaggedOutput(self.REJECTS, result)
    else:
      # The raw line travels along only where a later step may reject it.
      if self._kind.name == raw_logs.MOVIELENS_RATING_ROWS.name:
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

  def __init__(self, kind: raw_logs.RowKind):
    self._kind = kind
    self._read = beam.metrics.Metrics.counter(
        _METRICS_NAMESPACE, f"{ROWS_READ}_{kind.name}"
    )
    self._rejected = beam.metrics.Metrics.counter(
        _METRICS_NAMESPACE, f"{ROWS_REJECTED}_{kind.name}"
    )

  def process(self, path: str):
    try:
      verify_readable(path)
    except CorruptFileError as error:
      self._read.inc()
      self._rejected.inc()
      yield beam.pvalue.TaggedOutput(
          self.CORRUPT,
          raw_logs.Reject(raw_logs.CORRUPT_FILE, "", path, str(error)),
      )
      return
    with open_decompressed(path) as stream:
      for line in raw_logs.iter_lines(stream):
        yield path, line


class _LookupMovie(beam.DoFn):
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
    result = raw_logs.rating_to_events(rating, movie_categories, line, source)
    if isinstance(result, raw_logs.Reject):
      yield beam.pvalue.TaggedOutput(self.REJECTS, result)
      return
    behavior, impression = result
    yield behavior
    yield beam.pvalue.TaggedOutput(self.IMPRESSIONS, impression)


class _Parsed:
  """The outputs of reading one kind of file."""

  def __init__(self, events, rejects, stats):
    self.events = events
    self.rejects = rejects
    self.stats = stats


def _read_rows(
    pipeline: beam.Pipeline,
    label: str,
    patterns: Sequence[str],
    kind: raw_logs.RowKind,
    config: IngestionConfig,
) -> _Parsed:
  """Reads and parses every file of `patterns` as rows of `kind`."""
  paths = expand_patterns(patterns)
  files = pipeline | f"{label}Files" >> beam.Create(paths)
  corrupt = []
  if config.is_parquet(patterns):
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
      _ParseRows(kind, config.timestamp_bounds())
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
  return _Parsed(parsed["events"], rejects, stats)


def _count_valid(label: str, events) -> Any:
  return (
      events
      | f"{label}CountValid" >> beam.combiners.Count.Globally()
      | f"{label}ValidStat" >> beam.Map(lambda n: (ROWS_VALID, n))
  )


@dataclasses.dataclass
class IngestionOutputs:
  """PCollections of one ingestion job (serialized tf.Examples per split)."""

  train: Any
  eval: Any
  rejects: Any
  summary: Any  # one dict


def expand_ingestion(
    pipeline: beam.Pipeline, config: IngestionConfig
) -> IngestionOutputs:
  """Adds reading, validation, sampling and example building to `pipeline`."""
  stats = []
  rejects = []
  if config.input_format == "movielens":
    movies = _read_rows(
        pipeline, "Movies", config.movies_patterns,
        raw_logs.MOVIELENS_MOVIE_ROWS, config,
    )
    ratings = _read_rows(
        pipeline, "Ratings", config.input_patterns,
        raw_logs.MOVIELENS_RATING_ROWS, config,
    )
    movie_categories = movies.events | "MovieCategories" >> beam.Map(
        lambda m: (m.movie_id, m.category_id)
    )
    looked_up = ratings.events | "LookupMovie" >> beam.ParDo(
        _LookupMovie(), beam.pvalue.AsDict(movie_categories)
    ).with_outputs(_LookupMovie.IMPRESSIONS, _LookupMovie.REJECTS, main="behaviors")
    behaviors = looked_up["behaviors"]
    impressions = looked_up[_LookupMovie.IMPRESSIONS]
    stats += [
        movies.stats, ratings.stats,
        _count_valid("Movies", movies.events), _count_valid("Ratings", behaviors),
    ]
    rejects += [movies.rejects, ratings.rejects, looked_up[_LookupMovie.REJECTS]]
  else:
    behavior_patterns = (
        config.input_patterns
        if config.input_format == "behavior"
        else config.behavior_patterns
    )
    read_behaviors = _read_rows(
        pipeline, "Behaviors", behavior_patterns, raw_logs.BEHAVIOR_ROWS, config
    )
    behaviors = read_behaviors.events
    stats += [read_behaviors.stats, _count_valid("Behaviors", behaviors)]
    rejects.append(read_behaviors.rejects)
    if config.input_format == "impressions":
      read_impressions = _read_rows(
          pipeline, "Impressions", config.input_patterns,
          raw_logs.IMPRESSION_ROWS, config,
      )
      impressions = read_impressions.events
      stats += [read_impressions.stats, _count_valid("Impressions", impressions)]
      rejects.append(read_impressions.rejects)
    else:
      pv = features.BEHAVIOR_TYPES.index("pv")
      start = config.impression_start_timestamp
      end = config.impression_end_timestamp
      # Page views outside the impression window are only history: skip
      # sampling for them (BuildExamples would drop them anyway).
      in_window = (
          lambda b: b.behavior_type == pv
          and (start is None or b.timestamp >= start)
          and (end is None or b.timestamp < end)
      )
      split_pv = behaviors | "PageViewsInWindow" >> beam.Partition(
          lambda b, _: 0 if in_window(b) else 1 + (b.behavior_type != pv), 3
      )
      positives = split_pv[0] | "AsPositives" >> beam.Map(
          lambda b: raw_logs.Impression(
              b.user_id, b.item_id, b.category_id, b.timestamp, 1
          )
      )
      stats.append(
          split_pv[1]
          | "CountOutsideWindow" >> beam.combiners.Count.Globally()
          | "OutsideStat" >> beam.Map(
              lambda n: (sequence_builder.STAT_IMPRESSIONS_OUTSIDE_WINDOW, n)
          )
      )
      sampled = {"positives": positives, "behaviors": behaviors} | (
          "SampleNegatives"
          >> sequence_builder.SampleNegatives(config.neg_per_pos, config.seed)
      )
      impressions = sampled["impressions"]
      stats.append(sampled["stats"])

  built = {"behaviors": behaviors, "impressions": impressions} | (
      "BuildExamples" >> sequence_builder.BuildExamples(config.sequence_config())
  )
  stats.append(built["stats"])
  stats.append(_daily_volume(behaviors, impressions, built["train"], built["eval"]))
  all_rejects = tuple(rejects) | "FlattenRejects" >> beam.Flatten()
  reject_stats = all_rejects | "RejectReasons" >> beam.Map(
      lambda r: (_REJECT_PREFIX + r.reason, 1)
  )
  zeros = pipeline | "ZeroStats" >> beam.Create(
      [(name, 0) for name in (ROWS_READ, ROWS_VALID, HEADER_LINES)]
      + [(name, 0) for name in sequence_builder.STAT_NAMES]
  )
  summary = (
      tuple(stats) + (reject_stats, zeros)
      | "FlattenStats" >> beam.Flatten()
      | "SumStats" >> beam.CombinePerKey(sum)
      | "StatList" >> beam.combiners.ToList()
      | "Summary" >> beam.Map(
          _make_summary, config, beam.pvalue.AsSingleton(built["eval_start"])
      )
  )
  return IngestionOutputs(built["train"], built["eval"], all_rejects, summary)


_DAY_PREFIX = "day:"
VOLUME_MEASURES: tuple[str, ...] = ("behaviors", "impressions", "examples")


class _ExampleDay(beam.DoFn):
  """Serialized example -> the UTC day (days since epoch) of its timestamp."""

  def setup(self):
    # On the workers, not at import: building the pipeline in a light process
    # does not load TensorFlow (as sequence_builder._ExampleEncoder).
    from tensorflow.core.example import example_pb2  # pylint: disable=g-import-not-at-top

    self._example_pb2 = example_pb2

  def process(self, serialized):
    example = self._example_pb2.Example.FromString(serialized)
    feature = example.features.feature[features.TIMESTAMP.name]
    yield feature.int64_list.value[0] // features.SECONDS_PER_DAY


def _daily_volume(behaviors, impressions, train, eval_examples):
  """(day:<measure>:<day>, count) stats: the volume of every UTC day."""
  examples = (train, eval_examples) | "AllExamples" >> beam.Flatten()
  parts = (
      behaviors | "BehaviorDay" >> beam.Map(lambda b: b.timestamp // features.SECONDS_PER_DAY),
      impressions | "ImpressionDay" >> beam.Map(
          lambda i: i.timestamp // features.SECONDS_PER_DAY
      ),
      examples | "ExampleDay" >> beam.ParDo(_ExampleDay()),
  )
  counted = [
      days
      | f"Count{measure.capitalize()}ByDay" >> beam.combiners.Count.PerElement()
      | f"{measure.capitalize()}DayStat" >> beam.MapTuple(
          lambda day, n, m=measure: (f"{_DAY_PREFIX}{m}:{day}", n)
      )
      for measure, days in zip(VOLUME_MEASURES, parts)
  ]
  return tuple(counted) | "FlattenDayStats" >> beam.Flatten()


def _volume_by_day(
    stats: Mapping[str, int], config: IngestionConfig
) -> dict[str, dict[str, int]]:
  """ISO day -> measure -> count, for the days of the impression window
  (a span's window, or the first to the last day with impressions)."""
  counts: dict[int, dict[str, int]] = {}
  for name, n in stats.items():
    if name.startswith(_DAY_PREFIX):
      measure, day = name[len(_DAY_PREFIX):].split(":")
      counts.setdefault(int(day), {})[measure] = n
  if config.impression_start_timestamp is not None and (
      config.impression_end_timestamp is not None
  ):
    first = config.impression_start_timestamp // features.SECONDS_PER_DAY
    last = (config.impression_end_timestamp - 1) // features.SECONDS_PER_DAY
  else:
    days = [d for d, c in counts.items() if c.get("impressions")]
    if not days:
      return {}
    first, last = min(days), max(days)
  epoch = datetime.date(1970, 1, 1)
  return {
      (epoch + datetime.timedelta(days=day)).isoformat(): {
          m: counts.get(day, {}).get(m, 0) for m in VOLUME_MEASURES
      }
      for day in range(first, last + 1)
  }


def volume_problems(
    volume_by_day: Mapping[str, Mapping[str, int]],
    eval_start_timestamp: Optional[int],
    min_ratio: float,
) -> list[str]:
  """Eval days whose volume fell far below the earlier days' (one line each).

  Each eval day's behaviours, impressions and examples are compared with the
  median of that measure over the earlier days of the window that have any
  (a day before the log began is no reference). A lost half-day, a truncated
  file or a missing shard shows up here even when every row read was valid.
  """
  if min_ratio <= 0 or eval_start_timestamp is None:
    return []
  eval_day = datetime.date(1970, 1, 1) + datetime.timedelta(
      days=eval_start_timestamp // features.SECONDS_PER_DAY
  )
  earlier = [d for d in volume_by_day if d < eval_day.isoformat()]
  later = sorted(d for d in volume_by_day if d >= eval_day.isoformat())
  problems = []
  for measure in VOLUME_MEASURES:
    reference = [volume_by_day[d][measure] for d in earlier if volume_by_day[d][measure]]
    if not reference:
      continue
    median = statistics.median(reference)
    for day in later:
      n = volume_by_day[day][measure]
      if n < min_ratio * median:
        problems.append(
            f"{day}: {n} {measure}, {n / median:.0%} of the median {median:g} "
            f"of {len(reference)} earlier day(s) (min_volume_ratio "
            f"{min_ratio:g})"
        )
  return problems


def _make_summary(
    stat_list: Sequence[tuple[str, int]],
    config: IngestionConfig,
    eval_start: Optional[int],
) -> dict[str, Any]:
  stats = dict(stat_list)
  rejected_by_reason = {reason: 0 for reason in raw_logs.REJECT_REASONS}
  for name, count in stats.items():
    if name.startswith(_REJECT_PREFIX):
      rejected_by_reason[name[len(_REJECT_PREFIX):]] += count
  summary = {
      ROWS_READ: stats[ROWS_READ],
      ROWS_VALID: stats[ROWS_VALID],
      ROWS_REJECTED: sum(rejected_by_reason.values()),
      "rejected_by_reason": rejected_by_reason,
      HEADER_LINES: stats[HEADER_LINES],
  }
  summary.update({name: stats[name] for name in sequence_builder.STAT_NAMES})
  examples = summary["examples_train"] + summary["examples_eval"]
  summary["mean_history_length"] = (
      summary["history_positions"] / examples if examples else 0.0
  )
  summary["eval_start_timestamp"] = eval_start
  summary["volume_by_day"] = _volume_by_day(stats, config)
  summary["volume_problems"] = volume_problems(
      summary["volume_by_day"], eval_start, config.min_volume_ratio
  )
  summary["config"] = dataclasses.asdict(config)
  return summary


class _WriteJson(beam.DoFn):

  def __init__(self, path: str):
    self._path = path

  def process(self, summary):
    with FileSystems.create(self._path) as handle:
      handle.write(json.dumps(summary, indent=2, sort_keys=True).encode("utf-8"))
    yield self._path


def write_side_outputs(outputs: IngestionOutputs, output_dir: str) -> None:
  """Writes dead letters (JSON lines) under rejected/ and summary.json."""
  _ = (
      outputs.rejects
      | "RejectJson" >> beam.Map(raw_logs.Reject.to_json)
      | "WriteRejects" >> beam.io.WriteToText(
          posixpath.join(output_dir, REJECTED_DIR, "rejected"),
          file_name_suffix=".jsonl",
      )
  )
  _ = outputs.summary | "WriteSummary" >> beam.ParDo(
      _WriteJson(posixpath.join(output_dir, SUMMARY_FILE))
  )


def write_examples(outputs: IngestionOutputs, output_dir: str) -> None:
  """Writes GZIP TFRecords under output_dir/train/ and output_dir/eval/."""
  for split, examples in (
      (sequence_builder.TRAIN, outputs.train),
      (sequence_builder.EVAL, outputs.eval),
  ):
    _ = examples | f"Write{split.capitalize()}" >> beam.io.WriteToTFRecord(
        posixpath.join(output_dir, split, "part"),
        file_name_suffix=".tfrecord.gz",
    )


def read_summary(output_dir: str) -> dict[str, Any]:
  """Reads summary.json and checks every row read is valid or rejected."""
  with FileSystems.open(posixpath.join(output_dir, SUMMARY_FILE)) as handle:
    summary = json.loads(handle.read().decode("utf-8"))
  check_summary(summary)
  return summary


def counters(result) -> dict[str, int]:
  """Committed Beam counters of the ingestion namespace ({} if unsupported)."""

  try:
    queried = result.metrics().query(
        MetricsFilter().with_namespace(_METRICS_NAMESPACE)
    )
  except (NotImplementedError, AttributeError):
    return {}
  totals: dict[str, int] = {}
  for counter in queried["counters"]:
    name = counter.key.metric.name
    value = counter.committed if counter.committed is not None else counter.attempted
    totals[name] = totals.get(name, 0) + (value or 0)
  return totals


def check_metrics(result, summary: Mapping[str, Any]) -> None:
  """Cross-checks the summary against the Beam counters where the runner has them.

  The DirectRunner reports counters in multi_processing mode too (checked by
  tests/test_build_examples.py); a runner without metrics only gets a log line.
  """
  totals = counters(result)
  if not totals:
    logging.warning("runner reported no Beam counters; summary.json only")
    return
  from_counters = {
      ROWS_READ: sum(v for k, v in totals.items() if k.startswith(ROWS_READ + "_")),
      "parse_rejects": sum(
          v for k, v in totals.items() if k.startswith(ROWS_REJECTED + "_")
      ),
      "examples_train": totals.get("examples_train", 0),
      "examples_eval": totals.get("examples_eval", 0),
  }
  from_summary = {
      ROWS_READ: summary[ROWS_READ],
      # The MovieLens movie lookup rejects after parsing; counters see parsing.
      "parse_rejects": summary[ROWS_REJECTED]
      - summary["rejected_by_reason"][raw_logs.UNKNOWN_ITEM],
      "examples_train": summary["examples_train"],
      "examples_eval": summary["examples_eval"],
  }
  if from_counters != from_summary:
    raise SummaryMismatchError(
        f"Beam counters {from_counters} disagree with summary.json {from_summary}"
    )


def check_summary(summary: Mapping[str, Any]) -> None:
  if summary[ROWS_READ] != summary[ROWS_VALID] + summary[ROWS_REJECTED]:
    raise SummaryMismatchError(
        f"rows_read={summary[ROWS_READ]} != rows_valid={summary[ROWS_VALID]} "
        f"+ rows_rejected={summary[ROWS_REJECTED]}"
    )


def beam_args_with_defaults(beam_args: Sequence[str]) -> list[str]:
  """Adds the local multi-process DirectRunner args unless a runner is given."""
  args = list(beam_args)
  if not any(a == "--runner" or a.startswith("--runner=") for a in args):
    args += DEFAULT_LOCAL_BEAM_ARGS
  return args


class OutputDirError(IngestionError, IOError):
  """The output directory is not empty (without overwrite) or not writable."""


class EmptySplitError(IngestionError, ValueError):
  """The job built no train or no eval examples."""


class VolumeError(IngestionError, ValueError):
  """An eval day's volume fell far below the earlier days' (see volume_problems)."""


def _is_local(path: str) -> bool:
  return "://" not in path


def _has_content(path: str) -> bool:
  if _is_local(path):
    if os.path.isfile(path):
      raise OutputDirError(f"output_dir {path} is a file, not a directory")
    return os.path.isdir(path) and bool(os.listdir(path))
  return bool(FileSystems.match([posixpath.join(path, "**")])[0].metadata_list)


def _files_under(path: str) -> list[str]:
  (result,) = FileSystems.match([posixpath.join(path, "**")])
  return sorted(m.path for m in result.metadata_list)


def _move_into_place(staging: str, output_dir: str, overwrite: bool) -> None:
  """Replaces output_dir by staging (whole: no file of an older run stays)."""
  if overwrite and FileSystems.exists(output_dir):
    FileSystems.delete([output_dir])
  if _is_local(output_dir):
    os.replace(staging, output_dir)  # atomic on one local file system
    return
  # Object stores have no directory rename: move the files, summary.json
  # last, so that a reader who finds the summary finds every file.
  sources = _files_under(staging)
  sources.sort(key=lambda p: p.endswith("/" + SUMMARY_FILE))
  targets = [output_dir + p[len(staging):] for p in sources]
  FileSystems.rename(sources, targets)
  FileSystems.delete([staging])


def prepare_output_dir(output_dir: str, overwrite: bool) -> str:
  """Checks output_dir may be written and makes a fresh staging directory
  beside it; returns the staging directory.

  Raises:
    OutputDirError: output_dir has content and `overwrite` is False, or its
      parent cannot be written.
  """
  output_dir = output_dir.rstrip("/")
  if _has_content(output_dir) and not overwrite:
    raise OutputDirError(
        f"output_dir {output_dir} is not empty; pass --overwrite to replace it "
        "whole (outputs of two runs are never mixed)"
    )
  staging = f"{output_dir}.tmp-{uuid.uuid4().hex[:12]}"
  try:
    FileSystems.mkdirs(staging)
  except (OSError, IOError) as error:
    raise OutputDirError(
        f"cannot write beside output_dir {output_dir}: {error}"
    ) from None
  return staging


def check_outputs(summary: Mapping[str, Any], output_dir: str, allow_empty_split: bool) -> None:
  """Fails the job on a corrupt input file or an empty split (see `run`)."""
  corrupt = summary["rejected_by_reason"].get(raw_logs.CORRUPT_FILE, 0)
  if corrupt:
    details = [
        r["detail"] for r in read_rejects(output_dir)
        if r["reason"] == raw_logs.CORRUPT_FILE
    ]
    raise CorruptFileError(
        f"{corrupt} input file(s) could not be read whole, none of their rows "
        f"used: {'; '.join(sorted(details))}"
    )
  if summary.get("volume_problems"):
    raise VolumeError(
        "the eval day's volume fell far below the earlier days': "
        + "; ".join(summary["volume_problems"])
    )
  empty = [
      split for split in (sequence_builder.TRAIN, sequence_builder.EVAL)
      if summary[f"examples_{split}"] == 0
  ]
  if empty and not allow_empty_split:
    raise EmptySplitError(
        f"no {' and no '.join(empty)} examples (rows_read={summary[ROWS_READ]}, "
        f"rows_rejected={summary[ROWS_REJECTED]}, impressions="
        f"{summary[sequence_builder.STAT_IMPRESSIONS]}, below min_history="
        f"{summary[sequence_builder.STAT_BELOW_MIN_HISTORY]}, examples "
        f"train/eval={summary['examples_train']}/{summary['examples_eval']}, "
        f"eval_days={summary['config']['eval_days']}); pass "
        "--allow_empty_split to write it anyway"
    )


def read_rejects(output_dir: str) -> list[dict[str, Any]]:
  """The dead letters of a job, as dicts."""
  rejects = []
  for path in FileSystems.match(
      [posixpath.join(output_dir, REJECTED_DIR, "*.jsonl")]
  )[0].metadata_list:
    with FileSystems.open(path.path) as handle:
      rejects += [
          json.loads(line) for line in handle.read().decode("utf-8").splitlines()
          if line.strip()
      ]
  return rejects


def run(
    config: IngestionConfig,
    output_dir: str,
    beam_args: Sequence[str],
    overwrite: bool = False,
    allow_empty_split: bool = False,
) -> dict[str, Any]:
  """Runs the ingestion job to `output_dir` and returns the checked summary.

  Writes train/ and eval/ TFRecords, rejected/ and summary.json into a fresh
  staging directory beside `output_dir` and moves it into place only when
  the job succeeded and its output passed the checks, so `output_dir` never
  holds a partial output or files of another run.

  Args:
    config: what to read and how to build.
    output_dir: local path or any Beam file system URL; must be empty or
      absent unless `overwrite`.
    beam_args: PipelineOptions arguments (runner and its settings), used as
      given (see beam_args_with_defaults for the local default).
    overwrite: replace a non-empty `output_dir` whole.
    allow_empty_split: accept a job that built no train or no eval examples.

  Raises:
    NoMatchError: an input pattern matches no file (checked first).
    OutputDirError: see `prepare_output_dir`.
    CorruptFileError: an input file could not be read whole (its rows are
      not used; the job's output is discarded).
    EmptySplitError: no train or no eval examples, unless allowed.
    SummaryMismatchError: a row is unaccounted for or the Beam counters
      disagree with the summary.
  """

  register_tf_filesystems(
      [output_dir, *config.input_patterns, *config.behavior_patterns]
  )
  # Every glob must match before anything is written.
  for patterns in (
      config.input_patterns, config.behavior_patterns, config.movies_patterns
  ):
    if patterns:
      expand_patterns(patterns)
  output_dir = output_dir.rstrip("/")
  staging = prepare_output_dir(output_dir, overwrite)
  try:
    pipeline = beam.Pipeline(options=PipelineOptions(list(beam_args)))
    outputs = expand_ingestion(pipeline, config)
    write_examples(outputs, staging)
    write_side_outputs(outputs, staging)
    result = pipeline.run()
    result.wait_until_finish()
    summary = read_summary(staging)
    check_metrics(result, summary)
    check_outputs(summary, staging, allow_empty_split)
    _move_into_place(staging, output_dir, overwrite)
  except BaseException:
    if FileSystems.exists(staging):
      FileSystems.delete([staging])
    raise
  return summary
