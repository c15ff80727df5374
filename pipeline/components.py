"""Our custom TFX components (Python function components).

* `DataGate`: fails the run when ExampleValidator found anomalies or
  ingestion rejected too many rows (logic in `pipeline.data_gate`); passes the
  curated schema on, so Transform depends on it.
* `OfflineInfraValidator`: loads the candidate in an isolated process,
  replays warm-up requests, emits an InfraBlessing (logic in
  `pipeline.infra_validator`).

No `from __future__ import annotations` here: TFX parses these annotations.
"""

import os

import tensorflow as tf
from tfx import v1 as tfx
from tfx.types import artifact_utils
from tfx.utils import path_utils

from pipeline import data_gate
from pipeline import infra_validator

_artifacts = tfx.types.standard_artifacts
_InputArtifact = tfx.dsl.components.InputArtifact
_OutputArtifact = tfx.dsl.components.OutputArtifact
_Parameter = tfx.dsl.components.Parameter


@tfx.dsl.components.component
def DataGate(  # pylint: disable=invalid-name
    anomalies: _InputArtifact[_artifacts.ExampleAnomalies],
    examples: _InputArtifact[_artifacts.Examples],
    schema: _InputArtifact[_artifacts.Schema],
    validated_schema: _OutputArtifact[_artifacts.Schema],
    max_reject_fraction: _Parameter[float] = 0.001,
) -> None:
  """Stops the run on bad data; otherwise re-emits the schema.

  Args:
    anomalies: ExampleValidator's output (one SchemaDiff.pb per split).
    examples: the ingestion ExampleGen's examples (its summary.json counts
      the rows it rejected).
    schema: the curated schema (ImportSchemaGen).
    validated_schema: output, a copy of `schema`, only when the data passed.
    max_reject_fraction: largest tolerated fraction of rejected raw rows.

  Raises:
    data_gate.DataValidationError: with every reason, one per line.
  """

  splits = artifact_utils.decode_split_names(anomalies.split_names)
  problems = data_gate.check(
      data_gate.load_anomalies(anomalies.uri, splits),
      data_gate.load_summary(examples.uri),
      max_reject_fraction,
  )
  if problems:
    raise data_gate.DataValidationError(
        "input data failed validation, the run stops before training:\n  "
        + "\n  ".join(problems)
    )
  # Only the schema file: Transform refuses a schema directory holding more.
  for name in tf.io.gfile.listdir(schema.uri):
    tf.io.gfile.copy(
        os.path.join(schema.uri, name), os.path.join(validated_schema.uri, name),
        overwrite=True,
    )


@tfx.dsl.components.component
def OfflineInfraValidator(  # pylint: disable=invalid-name
    model: _InputArtifact[_artifacts.Model],
    examples: _InputArtifact[_artifacts.Examples],
    blessing: _OutputArtifact[_artifacts.InfraBlessing],
    split: _Parameter[str] = "eval",
    num_examples: _Parameter[int] = 32,
    output_key: _Parameter[str] = "probabilities",
    timeout_seconds: _Parameter[int] = 300,
) -> None:
  """Validates the candidate model offline and emits an InfraBlessing.

  Args:
    model: the Trainer's model (serving model under `Format-Serving/`).
    examples: held-out examples; `split` of them become warm-up requests.
    blessing: output; `blessed` 1/0 and, when blessed, `has_model` 1 with the
      stamped model (with warm-up requests) under `stamped_model/`, which the
      Pusher pushes.
    split: which split of `examples` to read.
    num_examples: how many held-out examples to send.
    output_key: the signature output that must hold probabilities.
    timeout_seconds: limit of the isolated check.
  """

  model_dir = path_utils.serving_model_path(
      model.uri, path_utils.is_old_model_artifact(model)
  )
  split_uri = artifact_utils.get_split_uri([examples], split)
  serialized = infra_validator.read_examples(
      [os.path.join(split_uri, "*.gz")], num_examples
  )
  result = infra_validator.validate(
      model_dir, serialized, blessing.uri, output_key, timeout_seconds
  )
  blessing.set_int_custom_property(infra_validator.BLESSED_KEY, int(result.blessed))
  if result.blessed:
    blessing.set_int_custom_property(infra_validator.HAS_MODEL_KEY, 1)
  marker = "INFRA_BLESSED" if result.blessed else "INFRA_NOT_BLESSED"
  with tf.io.gfile.GFile(os.path.join(blessing.uri, marker), "w") as f:
    f.write("; ".join(result.reasons))
