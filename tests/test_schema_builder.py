"""The checked-in schema agrees with the feature registry."""

import pytest
from google.protobuf import text_format
from tensorflow_metadata.proto.v0 import schema_pb2

from pipeline import configs
from pipeline import schema_builder
from preprocessing import features


def _checked_in():
  with open(configs.DEFAULT_SCHEMA_PATH) as f:
    return text_format.Parse(f.read(), schema_pb2.Schema())


def test_checked_in_schema_is_the_generated_one():
  with open(configs.DEFAULT_SCHEMA_PATH) as f:
    assert f.read() == schema_builder.schema_text(), (
        "pipeline/schema/schema.pbtxt is stale: run "
        "`python -m pipeline.schema_builder --output=pipeline/schema/schema.pbtxt`")


def test_checked_in_schema_matches_registry():
  schema = _checked_in()
  by_name = {f.name: f for f in schema.feature}
  assert set(by_name) == {f.name for f in features.ALL_FEATURES}
  for spec in features.ALL_FEATURES:
    feature = by_name[spec.name]
    assert feature.type == schema_pb2.INT
    assert feature.int_domain.min == 0
    if spec.is_sequence:
      assert feature.value_count.max == features.DEFAULT_MAX_SEQ_LEN
      assert not feature.HasField("shape")
    else:
      assert [d.size for d in feature.shape.dim] == [1]
    assert feature.presence.min_fraction == (1.0 if spec.required else 0.0)
  assert by_name["label"].int_domain.max == 1
  assert by_name["hist_behavior_types"].int_domain.max == 3
  assert schema_builder.sequence_bound(schema) == features.DEFAULT_MAX_SEQ_LEN


def test_other_bounds_and_bad_bound():
  assert schema_builder.sequence_bound(schema_builder.build_schema(64)) == 64
  with pytest.raises(ValueError, match="max_seq_len"):
    schema_builder.build_schema(0)
  schema = schema_builder.build_schema(64)
  schema.feature[-1].value_count.max = 65
  with pytest.raises(ValueError, match="disagree"):
    schema_builder.sequence_bound(schema)
