"""Input spans by date for the ingestion ExampleGen (no TFX import here).

`ExampleGenSettings` is the ExampleGen's custom_config; `ingestion_config_for_span`
turns it and a span (days since 1970-01-01) into the `IngestionConfig` of that
span: which files to read and which impressions are train and eval. See
`preprocessing.example_gen` for the rules.
"""

from __future__ import annotations

import dataclasses
import datetime
import posixpath
import re
from typing import Any, Mapping, Optional

from apache_beam.io.filesystems import FileSystems

from preprocessing import features
from preprocessing import ingest_job
from preprocessing import ingest_parse
from preprocessing import typed_config

_DATE_SPECS = ("{YYYY}", "{MM}", "{DD}")
_DATE_GLOB = {"{YYYY}": "????", "{MM}": "??", "{DD}": "??"}
_DATE_REGEX = {"{YYYY}": r"(\d{4})", "{MM}": r"(\d{2})", "{DD}": r"(\d{2})"}


@dataclasses.dataclass(frozen=True)
class ExampleGenSettings:
  """The executor's `custom_config` (a JSON object; unknown keys are errors).

  Attributes:
    input_format: one of ingest_parse.INPUT_FORMATS.
    input_pattern: main input relative to input_base (impressions, the
      behaviour log, or ratings.csv); may contain {YYYY}{MM}{DD}.
    behavior_pattern: behaviour log relative to input_base ('impressions'
      format only); with {YYYY}{MM}{DD} when the input pattern has it.
    movies_pattern: movies.csv relative to input_base ('movielens' only).
    window_days: days of impressions per span (date patterns only).
    max_seq_len, min_history, eval_days, neg_per_pos, seed, chunk_seconds:
      as in ingest_job.IngestionConfig.
    min_volume_ratio: as in ingest_job.IngestionConfig, for date patterns
      only (without dates there are no daily spans to compare); the summary
      records the volume problems and the pipeline's data gate acts on them.
  """

  input_format: str
  input_pattern: str
  behavior_pattern: Optional[str] = None
  movies_pattern: Optional[str] = None
  window_days: int = 7
  max_seq_len: int = features.DEFAULT_MAX_SEQ_LEN
  min_history: int = 1
  eval_days: int = 1
  neg_per_pos: int = 1
  seed: int = 0
  chunk_seconds: int = features.SECONDS_PER_DAY
  min_volume_ratio: float = 0.0

  def __post_init__(self):
    if self.input_format not in ingest_parse.INPUT_FORMATS:
      raise ValueError(
          f"input_format={self.input_format!r} not in {ingest_parse.INPUT_FORMATS}"
      )
    typed_config.check_int(self, "window_days", 1)
    if has_date_spec(self.input_pattern) and not (
        isinstance(self.eval_days, int) and self.eval_days < self.window_days
    ):
      raise ValueError(
          f"eval_days={self.eval_days} must be < window_days="
          f"{self.window_days} so that a span has train days"
      )
    if (
        self.behavior_pattern
        and has_date_spec(self.input_pattern)
        and not has_date_spec(self.behavior_pattern)
    ):
      raise ValueError(
          "behavior_pattern needs {YYYY}{MM}{DD} when input_pattern has it: "
          "a span may only read behaviours up to its own day"
      )

    # custom_config travels as a protobuf Struct, whose numbers are doubles:
    # a seed above 2**53 would not survive the trip.
    typed_config.check_int(self, "seed", 0, (1 << 53) - 1)
    # Checks the remaining settings as the ingestion job will (no file access).
    ingest_job.IngestionConfig(
        input_format=self.input_format,
        input_patterns=(self.input_pattern,),
        behavior_patterns=(self.behavior_pattern,) if self.behavior_pattern else (),
        movies_patterns=(self.movies_pattern,) if self.movies_pattern else (),
        max_seq_len=self.max_seq_len,
        min_history=self.min_history,
        eval_days=self.eval_days,
        neg_per_pos=self.neg_per_pos,
        seed=self.seed,
        chunk_seconds=self.chunk_seconds,
        min_volume_ratio=self.min_volume_ratio,
    )

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "ExampleGenSettings":
    return typed_config.from_dict(cls, values, "ExampleGen settings")


def has_date_spec(pattern: str) -> bool:
  return all(spec in pattern for spec in _DATE_SPECS)


def _span_of_date(year: int, month: int, day: int) -> int:
  return (datetime.date(year, month, day) - datetime.date(1970, 1, 1)).days


def dated_files(pattern: str) -> dict[str, int]:
  """Files matching a {YYYY}{MM}{DD} pattern -> their span (days since epoch)."""
  glob, regex = pattern, re.escape(pattern)
  for spec in _DATE_SPECS:
    glob = glob.replace(spec, _DATE_GLOB[spec])
    regex = regex.replace(re.escape(spec), _DATE_REGEX[spec])
  (result,) = FileSystems.match([glob])
  files = {}
  for metadata in result.metadata_list:
    match = re.fullmatch(regex, metadata.path)
    if match:
      year, month, day = map(int, match.groups())
      files[metadata.path] = _span_of_date(year, month, day)
  return files


def _files_in_days(pattern: str, first_span: int, last_span: int) -> tuple[str, ...]:
  files = tuple(
      sorted(
          path for path, span in dated_files(pattern).items()
          if first_span <= span <= last_span
      )
  )
  if not files:
    raise FileNotFoundError(
        f"no file of {pattern!r} dated within spans {first_span}..{last_span}"
    )
  return files


def ingestion_config_for_span(
    settings: ExampleGenSettings, input_base: str, span: int
):
  """The IngestionConfig of one span (see the module docstring)."""
  def full(pattern: Optional[str]) -> Optional[str]:
    return posixpath.join(input_base, pattern) if pattern else None

  main, behaviors, movies = (
      full(settings.input_pattern),
      full(settings.behavior_pattern),
      full(settings.movies_pattern),
  )
  common = dict(
      input_format=settings.input_format,
      movies_patterns=(movies,) if movies else (),
      max_seq_len=settings.max_seq_len,
      min_history=settings.min_history,
      eval_days=settings.eval_days,
      neg_per_pos=settings.neg_per_pos,
      seed=settings.seed,
      chunk_seconds=settings.chunk_seconds,
  )
  if not has_date_spec(main):
    return ingest_job.IngestionConfig(
        input_patterns=(main,),
        behavior_patterns=(behaviors,) if behaviors else (),
        **common,
    )
  first_day = span - settings.window_days + 1
  if settings.input_format == "behavior":
    # The behaviour log is both the history and, within the window, the
    # source of the impressions.
    inputs = _files_in_days(main, 0, span)
    history: tuple[str, ...] = ()
  else:
    inputs = _files_in_days(main, first_day, span)
    history = _files_in_days(behaviors, 0, span) if behaviors else ()
  return ingest_job.IngestionConfig(
      input_patterns=inputs,
      behavior_patterns=history,
      min_volume_ratio=settings.min_volume_ratio,
      max_timestamp=(span + 2) * features.SECONDS_PER_DAY,
      eval_start_timestamp=(span - settings.eval_days + 1) * features.SECONDS_PER_DAY,
      impression_start_timestamp=first_day * features.SECONDS_PER_DAY,
      impression_end_timestamp=(span + 1) * features.SECONDS_PER_DAY,
      **common,
  )
