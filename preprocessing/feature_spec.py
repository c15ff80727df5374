"""The registry's raw examples as TensorFlow parses them.

The tf.io parsing spec of an ingestion example (`preprocessing.features`'
features, as `ingest_histories` writes them), beside the registry and read by
every stage that parses raw examples. Its own module because it needs
TensorFlow: `features` stays free of it for the serving client (BUILD's
`serving_requests` target) and the pipeline's config.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from preprocessing import features


def raw_feature_spec(include_label: bool = True) -> dict[str, Any]:
  """tf.io parsing spec of raw examples, from the feature registry.

  Sequences parse to RaggedTensor; an absent optional sequence (behaviour
  types) parses to empty rows, which `transform_features` treats as absent.
  """
  spec: dict[str, Any] = {}
  for feature in features.ALL_FEATURES:
    if feature is features.LABEL and not include_label:
      continue
    if feature.dtype != "int64":
      raise ValueError(f"unexpected dtype {feature.dtype} of {feature.name}")
    if feature.is_sequence:
      spec[feature.name] = tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64)
    else:
      spec[feature.name] = tf.io.FixedLenFeature([], tf.int64)
  return spec
