"""A TFX ExampleGen that runs the ingestion job, with input spans by date.

`create_example_gen(...)` returns a `FileBasedExampleGen` whose custom Beam
executor (`Executor`) builds point-in-time examples with
`preprocessing.ingestion` and emits the splits 'train' and 'eval' by time.

Spans. When the main input pattern (relative to `input_base`) contains
``{YYYY}{MM}{DD}``, TFX's driver resolves the span D (days since 1970-01-01,
the latest date present unless a `range_config` says otherwise) from it, and
the executor then reads:

* impressions (``impressions`` format: the impression files; ``behavior``
  format: the page views of the behaviour log) of the last `window_days` days
  ending at D: days D - window_days + 1 .. D;
* the behaviours for the histories from every behaviour file dated up to and
  including D (never a later one);

and splits by time: eval is the last `eval_days` days of the window
(D - eval_days + 1 .. D), train the days before. The valid-timestamp upper
bound is the end of day D + 1 (fixed by the span, so a re-run validates rows
the same way). Without a date in the pattern (e.g. MovieLens) every matching
file is read and eval is the last `eval_days` days before the latest
impression, as in the CLI.

Limit: TFX fingerprints only the files of the span's own pattern, so a change
to an older behaviour file does not by itself make a new span version.

Dead letters and the summary are written next to the splits in the output
artifact: ``<uri>/rejected/*.jsonl`` and ``<uri>/summary.json``; the counts
are logged and `rows_read == rows_valid + rows_rejected` is checked after the
run.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from absl import logging
from google.protobuf import json_format
from google.protobuf import struct_pb2
from tfx.components import FileBasedExampleGen
from tfx.components.example_gen import base_example_gen_executor
from tfx.components.example_gen import utils as example_gen_utils
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2
from tfx.utils import proto_utils

from preprocessing import ingest_job
from preprocessing import ingest_summary
from preprocessing import ingest_write
from preprocessing.spans import ExampleGenSettings
from preprocessing.spans import ingestion_config_for_span

SPLIT_NAMES = ("train", "eval")


def settings_from_exec_properties(
    exec_properties: Mapping[str, Any],
) -> ExampleGenSettings:
  """The custom_config exec property (JSON of a CustomConfig) -> settings."""
  raw = exec_properties.get("custom_config")
  if not raw:
    raise ValueError("the ingestion ExampleGen needs a custom_config")
  custom = example_gen_pb2.CustomConfig()
  if isinstance(raw, str):
    json_format.Parse(raw, custom)
  else:
    custom.CopyFrom(raw)
  values = struct_pb2.Struct()
  if not custom.custom_config.Unpack(values):
    raise ValueError("custom_config must pack a google.protobuf.Struct")
  settings = json_format.MessageToDict(values)
  # Struct numbers are floats; the settings that are ints must be whole.
  float_settings = {
      f.name for f in dataclasses.fields(ExampleGenSettings) if f.type == "float"
  }
  for key, value in settings.items():
    if isinstance(value, float) and key not in float_settings:
      if not value.is_integer():
        raise ValueError(f"custom_config {key}={value} must be an integer")
      settings[key] = int(value)
  return ExampleGenSettings.from_dict(settings)


class Executor(base_example_gen_executor.BaseExampleGenExecutor):
  """Builds 'train'/'eval' examples of one span with preprocessing.ingest_job."""

  def GetInputSourceToExamplePTransform(self):
    raise NotImplementedError(
        "examples need the impressions and the behaviour log together, so "
        "this executor overrides GenerateExamplesByBeam instead"
    )

  def Do(self, input_dict, output_dict, exec_properties):
    (examples,) = output_dict["examples"]
    self._artifact_uri = examples.uri
    super().Do(input_dict, output_dict, exec_properties)
    summary = ingest_summary.read_summary(self._artifact_uri)
    logging.info(
        "Ingestion summary: %s",
        json.dumps({k: v for k, v in summary.items() if k != "config"}),
    )

  def GenerateExamplesByBeam(self, pipeline, exec_properties):
    output_config = example_gen_pb2.Output()
    proto_utils.json_to_proto(exec_properties["output_config"], output_config)
    names = tuple(s.name for s in output_config.split_config.splits)
    if names != SPLIT_NAMES:
      raise ValueError(
          f"output_config splits must be {SPLIT_NAMES} (split by time), got "
          f"{names}"
      )
    settings = settings_from_exec_properties(exec_properties)
    span = int(exec_properties.get(example_gen_utils.SPAN_PROPERTY_NAME) or 0)
    config = ingestion_config_for_span(
        settings, exec_properties["input_base"], span
    )
    logging.info("Span %d: ingestion config %s", span, config)
    outputs = ingest_job.expand_ingestion(pipeline, config)
    ingest_write.write_side_outputs(outputs, self._artifact_uri)
    return {"train": outputs.train, "eval": outputs.eval}


def create_example_gen(
    input_base: str,
    settings: ExampleGenSettings,
    range_config: Any = None,
):
  """The FileBasedExampleGen running `Executor` with `settings`.

  Args:
    input_base: directory the settings' patterns are relative to.
    settings: what to read and how (becomes the component's custom_config).
    range_config: optional range_config_pb2.RangeConfig selecting spans.

  Returns:
    A tfx FileBasedExampleGen with output splits 'train' and 'eval'.
  """
  values = struct_pb2.Struct()
  values.update(
      {k: v for k, v in dataclasses.asdict(settings).items() if v is not None}
  )
  custom_config = example_gen_pb2.CustomConfig()
  custom_config.custom_config.Pack(values)
  input_config = example_gen_pb2.Input(
      splits=[
          example_gen_pb2.Input.Split(
              name="span_input", pattern=settings.input_pattern
          )
      ]
  )
  # The hash buckets are required by the proto but unused: the executor
  # splits by time.
  output_config = example_gen_pb2.Output(
      split_config=example_gen_pb2.SplitConfig(
          splits=[
              example_gen_pb2.SplitConfig.Split(name=name, hash_buckets=1)
              for name in SPLIT_NAMES
          ]
      )
  )
  return FileBasedExampleGen(
      input_base=input_base,
      input_config=input_config,
      output_config=output_config,
      custom_config=custom_config,
      range_config=range_config,
      custom_executor_spec=executor_spec.BeamExecutorSpec(Executor),
  )
