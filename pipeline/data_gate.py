"""The data gate: stops a run before Transform when the data is not sane.

ExampleValidator only records anomalies; it does not stop a pipeline. The
`DataGate` component (pipeline/components.py) reads its output and fails the
run (raises `DataValidationError`) when

  * any split has a schema anomaly (too-long histories, a string or negative
    id, a missing feature, an out-of-domain label ...), or
  * ingestion rejected more than `max_reject_fraction` of the raw rows (a
    garbage shard, a string in an id column: rejected rows become dead
    letters, never examples, so ExampleValidator cannot see them; the
    ingestion summary counts them), or rejected any whole input file
    (``corrupt_file``: a truncated .gz is one reject but many lost rows), or
  * the summary records volume problems: an eval day whose behaviours,
    impressions or examples fell far below the window's earlier days (the
    ExampleGen compares them with the pipeline's `min_volume_ratio`, see
    `preprocessing.ingest_summary.volume_problems`), or
  * a split has no examples.

When the data passes, it re-emits the curated schema, and Transform reads
that output, so Transform (and everything after it) depends on the gate.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping, Optional

import tensorflow as tf
from tensorflow_metadata.proto.v0 import anomalies_pb2

ANOMALIES_FILE = "SchemaDiff.pb"  # tfx ExampleValidator's file per split
SUMMARY_FILE = "summary.json"  # written by the ingestion ExampleGen


class DataValidationError(RuntimeError):
  """The run's input data failed validation; training must not start."""


def describe_anomalies(anomalies_by_split: Mapping[str, Any]) -> list[str]:
  """{split: tensorflow_metadata Anomalies} -> one line per anomaly."""

  type_name = anomalies_pb2.AnomalyInfo.Type.Name
  problems = []
  for split, anomalies in sorted(anomalies_by_split.items()):
    for feature, info in sorted(anomalies.anomaly_info.items()):
      kinds = ",".join(sorted({type_name(r.type) for r in info.reason}))
      problems.append(
          f"split {split}: feature {feature}: {info.short_description} "
          f"({info.description}) [{kinds}]"
      )
    if anomalies.HasField("dataset_anomaly_info"):
      info = anomalies.dataset_anomaly_info
      problems.append(f"split {split}: dataset: {info.short_description} ({info.description})")
  return problems


def describe_rejects(
    summary: Optional[Mapping[str, Any]], max_reject_fraction: float
) -> list[str]:
  """Problems found in the ingestion summary (rows read vs rejected).

  A `max_reject_fraction` of 1.0 disables the check (for ExampleGens that
  write no summary).
  """
  if max_reject_fraction >= 1.0:
    return []
  if summary is None:
    return [
        f"no ingestion {SUMMARY_FILE} next to the examples: cannot check the "
        "rejected-row fraction"
    ]
  try:
    rows_read = int(summary["rows_read"])
    rows_rejected = int(summary["rows_rejected"])
  except (KeyError, TypeError, ValueError):
    return [f"ingestion summary lacks rows_read/rows_rejected: {dict(summary)}"]
  if rows_read <= 0:
    return ["ingestion read no rows"]
  problems = []
  corrupt = summary.get("rejected_by_reason", {}).get("corrupt_file", 0)
  if corrupt:
    problems.append(
        f"ingestion could not read {corrupt} input file(s) whole (corrupt_file "
        "dead letters in rejected/); none of their rows were used"
    )
  fraction = rows_rejected / rows_read
  if fraction > max_reject_fraction:
    by_reason = summary.get("rejected_by_reason", {})
    problems.append(
        f"ingestion rejected {rows_rejected} of {rows_read} rows "
        f"({fraction:.2%} > {max_reject_fraction:.2%}); by reason: {by_reason}"
    )
  return problems


def describe_volume(summary: Optional[Mapping[str, Any]]) -> list[str]:
  """Volume problems recorded by ingestion, and empty splits."""
  if summary is None:
    return []
  problems = [
      f"volume: {line}" for line in summary.get("volume_problems", [])
  ]
  for split in ("train", "eval"):
    if summary.get(f"examples_{split}", 1) == 0:
      problems.append(f"ingestion built no {split} examples")
  return problems


def load_anomalies(anomalies_uri: str, splits: list[str]) -> dict[str, Any]:
  """Reads ExampleValidator's `Split-<name>/SchemaDiff.pb` files."""

  result = {}
  for split in splits:
    path = os.path.join(anomalies_uri, f"Split-{split}", ANOMALIES_FILE)
    with tf.io.gfile.GFile(path, "rb") as f:
      result[split] = anomalies_pb2.Anomalies.FromString(f.read())
  return result


def load_summary(examples_uri: str) -> Optional[dict]:

  path = os.path.join(examples_uri, SUMMARY_FILE)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def check(
    anomalies_by_split: Mapping[str, Any],
    summary: Optional[Mapping[str, Any]],
    max_reject_fraction: float,
) -> list[str]:
  """All reasons to stop the run; empty when the data passes."""
  return (
      describe_anomalies(anomalies_by_split)
      + describe_rejects(summary, max_reject_fraction)
      + describe_volume(summary)
  )
