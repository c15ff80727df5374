"""Offline infra validation on tiny real SavedModels: a good one is blessed and
carries warm-up requests; broken ones are refused with a reason."""

import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from pipeline import infra_validator

SPEC = {"item_id": tf.io.FixedLenFeature([1], tf.int64)}


def _save(path, fn, input_signature):
  module = tf.Module()
  module.serve = tf.function(fn, input_signature=input_signature)
  tf.saved_model.save(module, path, signatures={"serving_default": module.serve})
  return path


def _string_input():
  return [tf.TensorSpec([None], tf.string, name="examples")]


def _good(examples):
  parsed = tf.io.parse_example(examples, SPEC)
  return {"probabilities": tf.sigmoid(tf.cast(parsed["item_id"], tf.float32) * 0.01)}


def _nan(examples):
  parsed = tf.io.parse_example(examples, SPEC)
  return {"probabilities": tf.math.log(-tf.cast(parsed["item_id"], tf.float32) - 1.0)}


def _needs_label(examples):
  parsed = tf.io.parse_example(
      examples, {**SPEC, "label": tf.io.FixedLenFeature([1], tf.int64)})
  return {"probabilities": tf.cast(parsed["label"], tf.float32)}


def _python_callback(examples):
  parsed = tf.io.parse_example(examples, SPEC)
  value = tf.py_function(lambda x: x * 0.0, [tf.cast(parsed["item_id"], tf.float32)], tf.float32)
  value.set_shape([None, 1])
  return {"probabilities": value}


def _float_input(x):
  return {"probabilities": tf.sigmoid(x)[:, tf.newaxis]}


@pytest.fixture(scope="module")
def examples_file(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("examples") / "data.tfrecord.gz")
  with tf.io.TFRecordWriter(path, options="GZIP") as writer:
    for i in range(11):
      example = tf.train.Example()
      example.features.feature["item_id"].int64_list.value.append(100 + i)
      example.features.feature["label"].int64_list.value.append(i % 2)
      writer.write(example.SerializeToString())
  return path


def test_read_examples_drops_labels_and_limits(examples_file):
  got = infra_validator.read_examples([examples_file], limit=10)
  assert len(got) == 10
  parsed = [tf.train.Example.FromString(s) for s in got]
  assert [p.features.feature["item_id"].int64_list.value[0] for p in parsed] == list(range(100, 110))
  assert all("label" not in p.features.feature for p in parsed)
  with pytest.raises(ValueError, match="no example files"):
    infra_validator.read_examples([examples_file + ".missing*"], limit=3)


def test_good_model_is_blessed_with_warmup_requests(tmp_path, examples_file):
  model_dir = _save(str(tmp_path / "model"), _good, _string_input())
  examples = infra_validator.read_examples([examples_file], limit=11)
  out = str(tmp_path / "blessing")
  os.makedirs(out)
  result = infra_validator.validate(model_dir, examples, out)
  assert result.blessed, result.reasons
  assert result.report["inputs"] == {"examples": ["string", [None]]}
  assert result.report["examples"] == 11
  expected = 1 / (1 + np.exp(-np.arange(100, 111) * 0.01))
  assert result.report["prediction_min"] == pytest.approx(expected.min(), rel=1e-6)
  assert result.report["prediction_max"] == pytest.approx(expected.max(), rel=1e-6)
  stamped = os.path.join(out, infra_validator.STAMPED_MODEL_DIR)
  assert os.path.exists(os.path.join(stamped, "saved_model.pb"))
  # The candidate itself is untouched; the warm-up lives in the stamped copy.
  assert not os.path.exists(os.path.join(model_dir, "assets.extra"))
  warmup = os.path.join(stamped, infra_validator.WARMUP_RELATIVE_PATH)
  logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
          for r in tf.data.TFRecordDataset(warmup)]
  # 11 examples in requests of 8: 8 + 3.
  sizes = [tf.make_ndarray(l.predict_log.request.inputs["examples"]).shape[0] for l in logs]
  assert sizes == [8, 3]
  assert all(l.predict_log.request.model_spec.signature_name == "serving_default" for l in logs)
  assert os.path.exists(os.path.join(out, infra_validator.REPORT_FILE))


@pytest.mark.parametrize(
    "fn,signature,reason",
    [
        (_nan, _string_input, "not finite in"),
        (_needs_label, _string_input, "warm-up request failed"),
        (_python_callback, _string_input, "warm-up request failed"),
        (_float_input, lambda: [tf.TensorSpec([None], tf.float32, name="x")], "rank-1 string"),
    ],
    ids=["nan", "needs-label", "py-function", "float-input"],
)
def test_broken_models_are_not_blessed(tmp_path, examples_file, fn, signature, reason):
  model_dir = _save(str(tmp_path / "model"), fn, signature())
  examples = infra_validator.read_examples([examples_file], limit=4)
  out = str(tmp_path / "blessing")
  os.makedirs(out)
  result = infra_validator.validate(model_dir, examples, out)
  assert not result.blessed
  assert any(reason in r for r in result.reasons), result.reasons
  assert not os.path.exists(os.path.join(out, infra_validator.STAMPED_MODEL_DIR))


def test_missing_model_is_reported(tmp_path):
  report = infra_validator.run_isolated_check(
      str(tmp_path / "nope"), str(tmp_path / "nope.tfrecord"))
  assert not report["ok"] and "load failed" in report["reasons"][0]
