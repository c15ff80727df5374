"""The ingestion job: raw logs -> examples, dead letters and a summary.

Shared by the CLI (`preprocessing.build_examples`) and the TFX ExampleGen
executor (`preprocessing.example_gen`): `IngestionConfig` says what to read
and how to build; `expand_ingestion` adds the whole job to a Beam pipeline
and returns the train/eval example PCollections; `run` does all of it as one
job. The stages, in order: `ingest_read` (files -> rows parsed by
`ingest_parse`, dead letters), `ingest_histories` (point-in-time histories
-> examples), `ingest_write` (outputs staged and moved into place),
`ingest_summary` (the summary and the checks that end a job).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from preprocessing import features
from preprocessing import ingest_histories
from preprocessing import ingest_parse
from preprocessing import ingest_read
from preprocessing import ingest_summary
from preprocessing import ingest_write
from preprocessing import typed_config

FILE_TYPES: tuple[str, ...] = ("auto", "csv", "parquet")


DEFAULT_LOCAL_BEAM_ARGS: tuple[str, ...] = (
    "--direct_running_mode=multi_processing",
    "--direct_num_workers=2",
)


@dataclasses.dataclass(frozen=True)
class IngestionConfig:
  """What to read and how to build examples.

  Attributes:
    input_format: one of ingest_parse.INPUT_FORMATS.
    input_patterns: globs of the main input: the behaviour log ('behavior'),
      the impression log ('impressions'), ratings.csv ('movielens').
    behavior_patterns: globs of the behaviour log for the histories
      ('impressions' only; required there).
    movies_patterns: globs of movies.csv ('movielens' only; required there).
    file_type: 'csv', 'parquet', or 'auto' (parquet iff a pattern ends in
      '.parquet').
    max_seq_len, min_history, eval_days, chunk_seconds: see
      ingest_histories.SequenceConfig.
    neg_per_pos: negatives per positive ('behavior' only).
    seed: negative-sampling seed.
    min_timestamp, max_timestamp: valid timestamp range (Unix seconds,
      inclusive); max None: one day after the config was made.
    eval_start_timestamp, impression_start_timestamp, impression_end_timestamp:
      see ingest_histories.SequenceConfig (the ExampleGen sets them per span).
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
  min_timestamp: int = ingest_parse.DEFAULT_MIN_TIMESTAMP
  max_timestamp: Optional[int] = None
  eval_start_timestamp: Optional[int] = None
  impression_start_timestamp: Optional[int] = None
  impression_end_timestamp: Optional[int] = None
  min_volume_ratio: float = 0.0

  def __post_init__(self):
    if self.input_format not in ingest_parse.INPUT_FORMATS:
      raise ValueError(
          f"input_format={self.input_format!r} not in {ingest_parse.INPUT_FORMATS}"
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
          self, "max_timestamp", ingest_parse.TimestampBounds.up_to_now().max_timestamp
      )
    # Validates the ranges and types the transforms will see.
    self.timestamp_bounds()
    self.sequence_config()
    ingest_histories.check_sampling_settings(self.neg_per_pos, self.seed)

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "IngestionConfig":
    """Builds a config from a dict, rejecting keys it does not know."""
    return typed_config.from_dict(cls, values, "ingestion settings")

  def timestamp_bounds(self) -> ingest_parse.TimestampBounds:
    return ingest_parse.TimestampBounds(self.min_timestamp, self.max_timestamp)

  def sequence_config(self) -> ingest_histories.SequenceConfig:
    return ingest_histories.SequenceConfig(
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


def expand_ingestion(
    pipeline: beam.Pipeline, config: IngestionConfig
) -> ingest_write.IngestionOutputs:
  """Adds reading, validation, sampling and example building to `pipeline`."""

  def read(label: str, patterns: Sequence[str], kind: ingest_parse.RowKind):
    return ingest_read.read_rows(
        pipeline, label, patterns, kind, config.is_parquet(patterns),
        config.timestamp_bounds(),
    )

  stats = []
  rejects = []
  if config.input_format == "movielens":
    movies = read("Movies", config.movies_patterns, ingest_parse.MOVIELENS_MOVIE_ROWS)
    ratings = read("Ratings", config.input_patterns, ingest_parse.MOVIELENS_RATING_ROWS)
    movie_categories = movies.events | "MovieCategories" >> beam.Map(
        lambda m: (m.movie_id, m.category_id)
    )
    looked_up = ratings.events | "LookupMovie" >> beam.ParDo(
        ingest_read.LookupMovie(), beam.pvalue.AsDict(movie_categories)
    ).with_outputs(
        ingest_read.LookupMovie.IMPRESSIONS, ingest_read.LookupMovie.REJECTS,
        main="behaviors",
    )
    behaviors = looked_up["behaviors"]
    impressions = looked_up[ingest_read.LookupMovie.IMPRESSIONS]
    stats += [
        movies.stats, ratings.stats,
        ingest_read.count_valid("Movies", movies.events),
        ingest_read.count_valid("Ratings", behaviors),
    ]
    rejects += [movies.rejects, ratings.rejects, looked_up[ingest_read.LookupMovie.REJECTS]]
  else:
    behavior_patterns = (
        config.input_patterns
        if config.input_format == "behavior"
        else config.behavior_patterns
    )
    read_behaviors = read("Behaviors", behavior_patterns, ingest_parse.BEHAVIOR_ROWS)
    behaviors = read_behaviors.events
    stats += [read_behaviors.stats, ingest_read.count_valid("Behaviors", behaviors)]
    rejects.append(read_behaviors.rejects)
    if config.input_format == "impressions":
      read_impressions = read("Impressions", config.input_patterns, ingest_parse.IMPRESSION_ROWS)
      impressions = read_impressions.events
      stats += [read_impressions.stats, ingest_read.count_valid("Impressions", impressions)]
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
          lambda b: ingest_parse.Impression(
              b.user_id, b.item_id, b.category_id, b.timestamp, 1
          )
      )
      stats.append(
          split_pv[1]
          | "CountOutsideWindow" >> beam.combiners.Count.Globally()
          | "OutsideStat" >> beam.Map(
              lambda n: (ingest_histories.STAT_IMPRESSIONS_OUTSIDE_WINDOW, n)
          )
      )
      sampled = {"positives": positives, "behaviors": behaviors} | (
          "SampleNegatives"
          >> ingest_histories.SampleNegatives(config.neg_per_pos, config.seed)
      )
      impressions = sampled["impressions"]
      stats.append(sampled["stats"])

  built = {"behaviors": behaviors, "impressions": impressions} | (
      "BuildExamples" >> ingest_histories.BuildExamples(config.sequence_config())
  )
  stats.append(built["stats"])
  stats.append(ingest_summary.daily_volume(behaviors, impressions, built["train"], built["eval"]))
  all_rejects = tuple(rejects) | "FlattenRejects" >> beam.Flatten()
  reject_stats = all_rejects | "RejectReasons" >> beam.Map(
      lambda r: (ingest_summary.REJECT_PREFIX + r.reason, 1)
  )
  zeros = pipeline | "ZeroStats" >> beam.Create(
      [
          (name, 0)
          for name in (
              ingest_read.ROWS_READ, ingest_read.ROWS_VALID, ingest_read.HEADER_LINES
          )
      ]
      + [(name, 0) for name in ingest_histories.STAT_NAMES]
  )
  summary = (
      tuple(stats) + (reject_stats, zeros)
      | "FlattenStats" >> beam.Flatten()
      | "SumStats" >> beam.CombinePerKey(sum)
      | "StatList" >> beam.combiners.ToList()
      | "Summary" >> beam.Map(
          ingest_summary.make_summary, config, beam.pvalue.AsSingleton(built["eval_start"])
      )
  )
  return ingest_write.IngestionOutputs(built["train"], built["eval"], all_rejects, summary)


def beam_args_with_defaults(beam_args: Sequence[str]) -> list[str]:
  """Adds the local multi-process DirectRunner args unless a runner is given."""
  args = list(beam_args)
  if not any(a == "--runner" or a.startswith("--runner=") for a in args):
    args += DEFAULT_LOCAL_BEAM_ARGS
  return args


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
    OutputDirError: see `ingest_write.prepare_output_dir`.
    CorruptFileError: an input file could not be read whole (its rows are
      not used; the job's output is discarded).
    EmptySplitError: no train or no eval examples, unless allowed.
    SummaryMismatchError: a row is unaccounted for or the Beam counters
      disagree with the summary.
  """

  ingest_read.register_tf_filesystems(
      [output_dir, *config.input_patterns, *config.behavior_patterns]
  )
  # Every glob must match before anything is written.
  for patterns in (
      config.input_patterns, config.behavior_patterns, config.movies_patterns
  ):
    if patterns:
      ingest_read.expand_patterns(patterns)
  output_dir = output_dir.rstrip("/")
  staging = ingest_write.prepare_output_dir(output_dir, overwrite)
  try:
    pipeline = beam.Pipeline(options=PipelineOptions(list(beam_args)))
    outputs = expand_ingestion(pipeline, config)
    ingest_write.write_examples(outputs, staging)
    ingest_write.write_side_outputs(outputs, staging)
    result = pipeline.run()
    result.wait_until_finish()
    summary = ingest_summary.read_summary(staging)
    ingest_summary.check_metrics(result, summary)
    ingest_summary.check_outputs(summary, staging, allow_empty_split)
    ingest_write.move_into_place(staging, output_dir, overwrite)
  except BaseException:
    if FileSystems.exists(staging):
      FileSystems.delete([staging])
    raise
  return summary
