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
gs://, s3:// (apache-beam[aws]) and hdfs:// all work; gzip is detected from
the `.gz` suffix. TensorFlow reads the TFRecords later: for s3:// or hdfs://
call `register_tf_filesystems` (imports tensorflow_io) first.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
from typing import Any, Mapping, Optional, Sequence

from absl import logging
import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

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


def _tuple_of_str(name: str, value: Any) -> tuple[str, ...]:
  if isinstance(value, str):
    value = (value,)
  value = tuple(value)
  if not all(isinstance(v, str) and v for v in value):
    raise TypeError(f"{name} must be non-empty strings, got {value!r}")
  return value


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
  """

  input_format: str
  input_patterns: tuple[str, ...]
  behavior_patterns: tuple[str, ...] = ()
  movies_patterns: tuple[str, ...] = ()
  file_type: str = "auto"
  max_seq_len: int = features.DEFAULT_MAX_SEQ_LEN
  min_history: int = 1
  eval_days: int = 1
  chunk_seconds: int = sequence_builder.SECONDS_PER_DAY
  neg_per_pos: int = 1
  seed: int = 0
  min_timestamp: int = raw_logs.DEFAULT_MIN_TIMESTAMP
  max_timestamp: Optional[int] = None
  eval_start_timestamp: Optional[int] = None
  impression_start_timestamp: Optional[int] = None
  impression_end_timestamp: Optional[int] = None

  def __post_init__(self):
    if self.input_format not in raw_logs.INPUT_FORMATS:
      raise ValueError(
          f"input_format={self.input_format!r} not in {raw_logs.INPUT_FORMATS}"
      )
    if self.file_type not in FILE_TYPES:
      raise ValueError(f"file_type={self.file_type!r} not in {FILE_TYPES}")
    for name in ("input_patterns", "behavior_patterns", "movies_patterns"):
      object.__setattr__(self, name, _tuple_of_str(name, getattr(self, name)))
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
      raise FileNotFoundError(f"no file matches {pattern!r}")
    paths.extend(matched)
  return sorted(set(paths))


def register_tf_filesystems(paths: Sequence[str]) -> None:
  """Imports tensorflow_io when a path needs it for TF's gfile (s3, hdfs)."""
  if any(p.startswith(("s3://", "hdfs://")) for p in paths):
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
  if config.is_parquet(patterns):
    raw = files | f"{label}ReadParquet" >> beam.io.ReadAllFromParquet(
        with_filename=True
    )
  else:
    # Bytes, not str: invalid UTF-8 becomes a reject instead of a crash.
    raw = files | f"{label}ReadText" >> beam.io.ReadAllFromText(
        with_filename=True, coder=beam.coders.BytesCoder()
    )
  parsed = raw | f"{label}Parse" >> beam.ParDo(
      _ParseRows(kind, config.timestamp_bounds())
  ).with_outputs(_ParseRows.REJECTS, _ParseRows.HEADERS, main="events")
  lines = raw | f"{label}CountRaw" >> beam.combiners.Count.Globally()
  headers = parsed[_ParseRows.HEADERS] | f"{label}CountHeaders" >> (
      beam.combiners.Count.Globally()
  )
  stats = (
      (lines | f"{label}ReadStat" >> beam.Map(lambda n: (ROWS_READ, n))),
      (headers | f"{label}HeaderStat" >> beam.Map(lambda n: (HEADER_LINES, n))),
      # A header is not a row read.
      (headers | f"{label}HeaderUnread" >> beam.Map(lambda n: (ROWS_READ, -n))),
  ) | f"{label}Stats" >> beam.Flatten()
  return _Parsed(parsed["events"], parsed[_ParseRows.REJECTS], stats)


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
  from apache_beam.metrics.metric import MetricsFilter  # pylint: disable=g-import-not-at-top

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


def run(
    config: IngestionConfig, output_dir: str, beam_args: Sequence[str]
) -> dict[str, Any]:
  """Runs the ingestion job to `output_dir` and returns the checked summary.

  Writes train/ and eval/ TFRecords, rejected/ and summary.json; raises
  SummaryMismatchError when a row is unaccounted for or the Beam counters
  disagree with the summary.

  Args:
    config: what to read and how to build.
    output_dir: local path or any Beam file system URL.
    beam_args: PipelineOptions arguments (runner and its settings), used as
      given (see beam_args_with_defaults for the local default).
  """
  from apache_beam.options.pipeline_options import PipelineOptions  # pylint: disable=g-import-not-at-top

  register_tf_filesystems(
      [output_dir, *config.input_patterns, *config.behavior_patterns]
  )
  pipeline = beam.Pipeline(options=PipelineOptions(list(beam_args)))
  outputs = expand_ingestion(pipeline, config)
  write_examples(outputs, output_dir)
  write_side_outputs(outputs, output_dir)
  result = pipeline.run()
  result.wait_until_finish()
  summary = read_summary(output_dir)
  check_metrics(result, summary)
  return summary
