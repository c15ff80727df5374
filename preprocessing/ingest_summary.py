"""Ingestion's summary and the checks at the end of a job.

Counting. The summary is computed inside the pipeline from PCollections
(counts combined per name), not from Beam metrics, so it is the same on every
runner (portable runners need not report metrics). `rows_read` counts the raw
lines/records read minus header lines, counted on the read PCollection itself;
`rows_valid` and `rows_rejected` count the parser's two outputs (for MovieLens
after the movie lookup). `check_summary` asserts
``rows_read == rows_valid + rows_rejected``. The same numbers also go to Beam
counters (namespace ``eta_ingestion``) for monitoring.

`make_summary` builds `summary.json` (its `config` is the job's
`ingest_job.IngestionConfig`), with each UTC day's volume (`daily_volume`)
and the eval days that fell below the earlier days' (`volume_problems`);
`read_summary`, `check_metrics` and `check_outputs` fail a job whose summary
does not add up, disagrees with the Beam counters, or shows a corrupt file,
a volume drop or an empty split.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import posixpath
import statistics
from typing import Any, Mapping, Optional, Sequence

from absl import logging
import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import MetricsFilter

from preprocessing import features
from preprocessing import ingest_histories
from preprocessing import ingest_parse
from preprocessing import ingest_read
from preprocessing import ingest_write

REJECT_PREFIX = "rejected:"


class SummaryMismatchError(AssertionError):
  """The summary does not account for every row read."""


class EmptySplitError(ingest_read.IngestionError, ValueError):
  """The job built no train or no eval examples."""


class VolumeError(ingest_read.IngestionError, ValueError):
  """An eval day's volume fell far below the earlier days' (see volume_problems)."""


_DAY_PREFIX = "day:"
VOLUME_MEASURES: tuple[str, ...] = ("behaviors", "impressions", "examples")


class _ExampleDay(beam.DoFn):
  """Serialized example -> the UTC day (days since epoch) of its timestamp."""

  def setup(self):
    # On the workers, not at import: building the pipeline in a light process
    # does not load TensorFlow (as ingest_histories._ExampleEncoder).
    from tensorflow.core.example import example_pb2  # pylint: disable=g-import-not-at-top

    self._example_pb2 = example_pb2

  def process(self, serialized):
    example = self._example_pb2.Example.FromString(serialized)
    feature = example.features.feature[features.TIMESTAMP.name]
    yield feature.int64_list.value[0] // features.SECONDS_PER_DAY


def daily_volume(behaviors, impressions, train, eval_examples):
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
    stats: Mapping[str, int], config: Any
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


def make_summary(
    stat_list: Sequence[tuple[str, int]],
    config: Any,
    eval_start: Optional[int],
) -> dict[str, Any]:
  stats = dict(stat_list)
  rejected_by_reason = {reason: 0 for reason in ingest_parse.REJECT_REASONS}
  for name, count in stats.items():
    if name.startswith(REJECT_PREFIX):
      rejected_by_reason[name[len(REJECT_PREFIX):]] += count
  summary = {
      ingest_read.ROWS_READ: stats[ingest_read.ROWS_READ],
      ingest_read.ROWS_VALID: stats[ingest_read.ROWS_VALID],
      ingest_read.ROWS_REJECTED: sum(rejected_by_reason.values()),
      "rejected_by_reason": rejected_by_reason,
      ingest_read.HEADER_LINES: stats[ingest_read.HEADER_LINES],
  }
  summary.update({name: stats[name] for name in ingest_histories.STAT_NAMES})
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



def read_summary(output_dir: str) -> dict[str, Any]:
  """Reads summary.json and checks every row read is valid or rejected."""
  with FileSystems.open(posixpath.join(output_dir, ingest_write.SUMMARY_FILE)) as handle:
    summary = json.loads(handle.read().decode("utf-8"))
  check_summary(summary)
  return summary


def counters(result) -> dict[str, int]:
  """Committed Beam counters of the ingestion namespace ({} if unsupported)."""

  try:
    queried = result.metrics().query(
        MetricsFilter().with_namespace(ingest_parse.METRICS_NAMESPACE)
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
      ingest_read.ROWS_READ: sum(
          v for k, v in totals.items() if k.startswith(ingest_read.ROWS_READ + "_")
      ),
      "parse_rejects": sum(
          v for k, v in totals.items() if k.startswith(ingest_read.ROWS_REJECTED + "_")
      ),
      "examples_train": totals.get("examples_train", 0),
      "examples_eval": totals.get("examples_eval", 0),
  }
  from_summary = {
      ingest_read.ROWS_READ: summary[ingest_read.ROWS_READ],
      # The MovieLens movie lookup rejects after parsing; counters see parsing.
      "parse_rejects": summary[ingest_read.ROWS_REJECTED]
      - summary["rejected_by_reason"][ingest_parse.UNKNOWN_ITEM],
      "examples_train": summary["examples_train"],
      "examples_eval": summary["examples_eval"],
  }
  if from_counters != from_summary:
    raise SummaryMismatchError(
        f"Beam counters {from_counters} disagree with summary.json {from_summary}"
    )


def check_summary(summary: Mapping[str, Any]) -> None:
  read = summary[ingest_read.ROWS_READ]
  valid = summary[ingest_read.ROWS_VALID]
  rejected = summary[ingest_read.ROWS_REJECTED]
  if read != valid + rejected:
    raise SummaryMismatchError(
        f"rows_read={read} != rows_valid={valid} + rows_rejected={rejected}"
    )


def check_outputs(summary: Mapping[str, Any], output_dir: str, allow_empty_split: bool) -> None:
  """Fails the job on a corrupt input file or an empty split (see `run`)."""
  corrupt = summary["rejected_by_reason"].get(ingest_parse.CORRUPT_FILE, 0)
  if corrupt:
    details = [
        r["detail"] for r in ingest_write.read_rejects(output_dir)
        if r["reason"] == ingest_parse.CORRUPT_FILE
    ]
    raise ingest_read.CorruptFileError(
        f"{corrupt} input file(s) could not be read whole, none of their rows "
        f"used: {'; '.join(sorted(details))}"
    )
  if summary.get("volume_problems"):
    raise VolumeError(
        "the eval day's volume fell far below the earlier days': "
        + "; ".join(summary["volume_problems"])
    )
  empty = [
      split for split in (ingest_histories.TRAIN, ingest_histories.EVAL)
      if summary[f"examples_{split}"] == 0
  ]
  if empty and not allow_empty_split:
    raise EmptySplitError(
        f"no {' and no '.join(empty)} examples (rows_read={summary[ingest_read.ROWS_READ]}, "
        f"rows_rejected={summary[ingest_read.ROWS_REJECTED]}, impressions="
        f"{summary[ingest_histories.STAT_IMPRESSIONS]}, below min_history="
        f"{summary[ingest_histories.STAT_BELOW_MIN_HISTORY]}, examples "
        f"train/eval={summary['examples_train']}/{summary['examples_eval']}, "
        f"eval_days={summary['config']['eval_days']}); pass "
        "--allow_empty_split to write it anyway"
    )
