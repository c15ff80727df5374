"""Ingestion, last stage: the job's outputs written and moved into place.

Train and eval examples as GZIP TFRecords, dead letters as JSON lines under
`rejected/`, `summary.json`; all into a staging directory beside the output
directory, which replaces it whole only when the job succeeded
(`prepare_output_dir`, `move_into_place`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
import uuid
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from preprocessing import ingest_histories
from preprocessing import ingest_parse
from preprocessing import ingest_read

SUMMARY_FILE = "summary.json"
REJECTED_DIR = "rejected"


@dataclasses.dataclass
class IngestionOutputs:
  """PCollections of one ingestion job (serialized tf.Examples per split)."""

  train: Any
  eval: Any
  rejects: Any
  summary: Any  # one dict


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
      | "RejectJson" >> beam.Map(ingest_parse.Reject.to_json)
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
      (ingest_histories.TRAIN, outputs.train),
      (ingest_histories.EVAL, outputs.eval),
  ):
    _ = examples | f"Write{split.capitalize()}" >> beam.io.WriteToTFRecord(
        posixpath.join(output_dir, split, "part"),
        file_name_suffix=".tfrecord.gz",
    )


class OutputDirError(ingest_read.IngestionError, IOError):
  """The output directory is not empty (without overwrite) or not writable."""


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


def move_into_place(staging: str, output_dir: str, overwrite: bool) -> None:
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
