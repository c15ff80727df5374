"""The local runner's rerun guard: a date that already ran is not run again.

Before running, the local runner looks in ML Metadata for a run with the same
settings (a fingerprint of the PipelineConfig and the schema file, recorded
on each run's context by `tag_new_run`) over the same input (the span and
input fingerprint TFX's ExampleGen driver would compute now) whose Pusher
completed (`completed_run`); if there is one it prints that run's outcome
instead of running. TFX caching alone cannot make such a rerun idempotent:
the Trainer's warm-start input is the model that run pushed (see
pipeline/pipeline.py).

TensorFlow, TFX and ML Metadata are imported inside the functions that use
them: the runner's --help and its config errors must not wait the seconds
they take to load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from typing import Optional, Sequence

from google.protobuf import json_format

from pipeline import configs
from pipeline import pipeline as pipeline_lib
from pipeline import run_report


def config_fingerprint(config: configs.PipelineConfig) -> str:
  """sha256 of every setting and of the schema file's content: runs with
  equal fingerprints ran the same thing (our code aside: after a code change,
  rerun with --force_rerun)."""
  # Lazy (module docstring): TensorFlow, for tf.io.gfile.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  digest = hashlib.sha256(
      json.dumps(dataclasses.asdict(config), sort_keys=True, default=str).encode()
  )
  with tf.io.gfile.GFile(config.schema_path, "rb") as f:
    digest.update(f.read())
  return digest.hexdigest()


def input_span_and_fingerprint(config: configs.PipelineConfig) -> tuple[int, str]:
  """The span a run of `config` reads and its input fingerprint, computed as
  TFX's ExampleGen driver does (file names, sizes and mtimes of the span).

  Raises:
    ValueError: no input file for the span (TFX's message).
  """
  # Lazy (module docstring): TFX.
  from tfx.components.example_gen import utils as example_gen_utils  # pylint: disable=g-import-not-at-top
  from tfx.proto import example_gen_pb2  # pylint: disable=g-import-not-at-top
  from tfx.proto import range_config_pb2  # pylint: disable=g-import-not-at-top

  properties = pipeline_lib.example_gen_component(config).exec_properties
  input_config = json_format.Parse(properties["input_config"], example_gen_pb2.Input())
  range_config = None
  if properties.get("range_config"):
    range_config = json_format.Parse(
        properties["range_config"], range_config_pb2.RangeConfig()
    )
  fingerprint, span, _ = example_gen_utils.calculate_splits_fingerprint_span_and_version(
      properties["input_base"], input_config.splits, range_config
  )
  return span, fingerprint


def completed_run(config: configs.PipelineConfig) -> Optional[str]:
  """The id of a run of `config` over the current input whose Pusher
  completed (see `run_report.find_completed_run`), or None."""
  if not os.path.exists(config.resolved_metadata_path):
    return None
  try:
    span, fingerprint = input_span_and_fingerprint(config)
  except ValueError:
    # No input for the span: nothing can match; the run reports the error.
    return None
  return run_report.find_completed_run(
      run_report.connect(config.resolved_metadata_path), config.pipeline_name,
      config_fingerprint(config), span, fingerprint,
  )


def writable_store(config: configs.PipelineConfig):
  """The run's SQLite ML Metadata store, opened for writing."""
  # Lazy (module docstring): ML Metadata.
  from ml_metadata import metadata_store  # pylint: disable=g-import-not-at-top
  from ml_metadata.proto import metadata_store_pb2  # pylint: disable=g-import-not-at-top

  connection = metadata_store_pb2.ConnectionConfig()
  connection.sqlite.filename_uri = config.resolved_metadata_path
  return metadata_store.MetadataStore(connection)


def tag_new_run(config: configs.PipelineConfig, earlier_run_ids: Sequence[str]) -> None:
  """Records the config fingerprint on the run LocalDagRunner just made (none
  when it failed before starting one)."""
  store = writable_store(config)
  ids = run_report.run_ids(store)
  if not ids or ids[-1] in earlier_run_ids:
    return
  context = store.get_context_by_type_and_name("pipeline_run", ids[-1])
  context.custom_properties[run_report.CONFIG_FINGERPRINT_PROPERTY].string_value = (
      config_fingerprint(config)
  )
  store.put_contexts([context])
