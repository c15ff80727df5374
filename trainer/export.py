"""SavedModel export: serving signatures over serialized tf.Example.

Two flavours, the same model:
  * `export_standalone`: the signature parses RAW examples and applies
    `preprocessing.transforms.transform_features` inside the graph (the
    standalone trainer; no Transform graph exists).
  * `export_with_transform`: the signature applies TFX Transform's layer
    (`tf_transform_output.transform_features_layer()`, attached to the model
    as `model.tft_layer` so its tables are saved) and adds the
    `transform_features` signature TFMA uses.
Both give `serving_default`: examples (string [B]) -> {"probabilities":
float32 [B]}, and `rank` (one user's history, N candidates -> float32 [N];
see `trainer.serving_signatures`). Both are the model's own paths, traced
inside `model.frozen_for_serving()` (eta reads SimHash signatures from the
signature table stored at export instead of hashing) and `xla_disabled()`
(TF Serving disables XLA JIT by default). The SavedModel needs none of our
Python code to load.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import tensorflow as tf

from preprocessing import features
from trainer import input as input_lib
from trainer import serving_signatures

SERVING_INPUT = features.SERVING_EXAMPLES_KEY
PROBABILITIES = features.PROBABILITIES_KEY


def _examples_spec() -> tf.TensorSpec:
  return tf.TensorSpec([None], tf.string, name=SERVING_INPUT)


def standalone_signatures(model: Any, max_seq_len: int) -> dict[str, Any]:
  """serving_default over raw serialized examples, transform inside; rank."""
  @tf.function(input_signature=[_examples_spec()], autograph=False)
  def serve(examples):
    transformed = input_lib.parse_and_transform(examples, max_seq_len, include_label=False)
    return {PROBABILITIES: tf.sigmoid(model(transformed, training=False))}

  return {
      features.SERVING_DEFAULT_SIGNATURE: serve.get_concrete_function(),
      features.RANK_SIGNATURE: serving_signatures.rank_function(model),
  }


def transform_signatures(model: Any, tf_transform_output: Any) -> dict[str, Any]:
  """serving_default and transform_features through the Transform layer; rank.

  rank applies `transform_features` itself: the preprocessing_fn is that
  function plus slicing keys (no analyzers), so the features are the same.
  """
  model.tft_layer = tf_transform_output.transform_features_layer()
  raw_spec = tf_transform_output.raw_feature_spec()
  serving_spec = {k: v for k, v in raw_spec.items() if k != features.LABEL_KEY}

  @tf.function(input_signature=[_examples_spec()], autograph=False)
  def serve(examples):
    raw = tf.io.parse_example(examples, serving_spec)
    transformed = model.tft_layer(raw)
    return {PROBABILITIES: tf.sigmoid(model(transformed, training=False))}

  @tf.function(input_signature=[_examples_spec()], autograph=False)
  def transform_features(examples):
    raw = tf.io.parse_example(examples, raw_spec)
    return model.tft_layer(raw)

  return {
      features.SERVING_DEFAULT_SIGNATURE: serve.get_concrete_function(),
      features.TRANSFORM_FEATURES_SIGNATURE: transform_features.get_concrete_function(),
      features.RANK_SIGNATURE: serving_signatures.rank_function(model),
  }


@contextlib.contextmanager
def without_optimizer(model: Any) -> Iterator[None]:
  """Keras' `include_optimizer=False` for `tf.saved_model.save`.

  A compiled model tracks its optimizer, so its Adam moments and weight
  averages would be saved beside the weights: three copies of every table
  that TF Serving loads and never reads (warm starts read layers only).
  """
  optimizer = getattr(model, "optimizer", None)
  if optimizer is None:
    yield
    return
  model.optimizer = None
  model._delete_tracking("optimizer")  # pylint: disable=protected-access
  try:
    yield
  finally:
    model.optimizer = optimizer


def export_standalone(model: Any, export_dir: str, max_seq_len: int) -> None:
  """Writes the standalone trainer's SavedModel (raw examples in)."""
  with model.xla_disabled(), model.frozen_for_serving(), without_optimizer(model):
    tf.saved_model.save(
        model, export_dir, signatures=standalone_signatures(model, max_seq_len)
    )


def export_with_transform(model: Any, export_dir: str, tf_transform_output: Any) -> None:
  """Writes the TFX Trainer's SavedModel (Transform layer inside)."""
  with model.xla_disabled(), model.frozen_for_serving(), without_optimizer(model):
    tf.saved_model.save(
        model, export_dir, signatures=transform_signatures(model, tf_transform_output)
    )
