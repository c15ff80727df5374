"""Offline infra validation on tiny real SavedModels: a good one is blessed and
carries warm-up requests; broken ones are refused with a reason. Models with
a `rank` signature get a rank request built from held-out examples (every
input of features.RANK_INPUT_NAMES, behaviour types included), and a rank
that returns values outside [0, 1] or takes other inputs is refused."""

import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from pipeline import infra_validator
from preprocessing import features

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
      feature = example.features.feature
      feature["item_id"].int64_list.value.append(100 + i)
      feature["category_id"].int64_list.value.append(i % 3)
      feature["timestamp"].int64_list.value.append(1_000_000 + i)
      feature["label"].int64_list.value.append(i % 2)
      # Example i has a history of (i * 7) % 11 behaviours: example 3 the longest (10).
      length = (i * 7) % 11
      feature["hist_item_ids"].int64_list.value.extend(range(500 + i, 500 + i + length))
      feature["hist_category_ids"].int64_list.value.extend([i % 3] * length)
      feature["hist_timestamps"].int64_list.value.extend(
          range(900_000, 900_000 + length))
      if i % 3 != 1:  # the others have no types, as a log without them
        feature["hist_behavior_types"].int64_list.value.extend(
            [(i + j) % 4 for j in range(length)])
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


_RANK_SPECS = [
    tf.TensorSpec([] if name == features.RANK_REQUEST_TIMESTAMP_KEY else [None],
                  tf.int64, name=name)
    for name in features.RANK_INPUT_NAMES
]
_TYPES = features.RANK_INPUT_NAMES.index(features.HIST_BEHAVIOR_TYPES.name)


def _rank_logits(hist_item_ids, hist_behavior_types, item_ids, category_ids,
                 request_timestamp):
  history = tf.cast(tf.size(hist_item_ids), tf.float32)
  types = tf.cast(tf.reduce_sum(hist_behavior_types), tf.float32)
  seconds = tf.cast(request_timestamp - 1_000_000, tf.float32)
  return (tf.cast(item_ids - 100, tf.float32) * 0.1 + tf.cast(category_ids, tf.float32)
          + 0.01 * history + 0.02 * types - 0.001 * seconds)


def _rank_good(hist_item_ids, hist_category_ids, hist_timestamps, hist_behavior_types,
               item_ids, category_ids, request_timestamp):
  del hist_category_ids, hist_timestamps
  logits = _rank_logits(hist_item_ids, hist_behavior_types, item_ids, category_ids,
                        request_timestamp)
  return {"probabilities": tf.sigmoid(logits)}


def _rank_out_of_range(hist_item_ids, hist_category_ids, hist_timestamps,
                       hist_behavior_types, item_ids, category_ids, request_timestamp):
  del hist_category_ids, hist_timestamps
  return {"probabilities": 1.0 + _rank_logits(
      hist_item_ids, hist_behavior_types, item_ids, category_ids,
      request_timestamp) ** 2}


def _rank_one_output(hist_item_ids, hist_category_ids, hist_timestamps,
                     hist_behavior_types, item_ids, category_ids, request_timestamp):
  probabilities = _rank_good(hist_item_ids, hist_category_ids, hist_timestamps,
                             hist_behavior_types, item_ids, category_ids,
                             request_timestamp)["probabilities"]
  return {"probabilities": probabilities[:1]}


def _rank_float_candidates(hist_item_ids, hist_category_ids, hist_timestamps,
                           hist_behavior_types, item_ids, category_ids,
                           request_timestamp):
  del hist_category_ids, hist_timestamps, hist_behavior_types
  return {"probabilities": tf.sigmoid(
      item_ids * 0.1 + tf.cast(category_ids + request_timestamp + tf.size(
          hist_item_ids, out_type=tf.int64), tf.float32) * 0.0)}


def _rank_without_types(hist_item_ids, hist_category_ids, hist_timestamps, item_ids,
                        category_ids, request_timestamp):
  """The rank signature before behaviour types: every behaviour a pv."""
  del hist_category_ids, hist_timestamps
  logits = _rank_logits(hist_item_ids, tf.zeros([0], tf.int64), item_ids,
                        category_ids, request_timestamp)
  return {"probabilities": tf.sigmoid(logits)}


def _save_with_rank(path, rank_fn, rank_specs=None):
  module = tf.Module()
  module.serve = tf.function(_good, input_signature=_string_input())
  module.rank = tf.function(rank_fn, input_signature=rank_specs or _RANK_SPECS)
  tf.saved_model.save(module, path, signatures={
      "serving_default": module.serve, features.RANK_SIGNATURE: module.rank})
  return path


def test_rank_request_is_the_longest_history_and_first_candidates(examples_file):
  examples = infra_validator.read_examples([examples_file], limit=11)
  got = infra_validator.rank_request_inputs(examples, num_candidates=4)
  assert list(got) == list(features.RANK_INPUT_NAMES)
  assert all(v.dtype == np.int64 for v in got.values())
  # Hand count: example 3 has the longest history, (3 * 7) % 11 = 10 behaviours.
  assert got["hist_item_ids"].tolist() == list(range(503, 513))
  assert got["hist_category_ids"].tolist() == [0] * 10
  assert got["hist_timestamps"].tolist() == list(range(900_000, 900_010))
  assert got["hist_behavior_types"].tolist() == [3, 0, 1, 2] * 2 + [3, 0]
  assert got["request_timestamp"].shape == () and int(got["request_timestamp"]) == 1_000_003
  assert got["item_ids"].tolist() == [100, 101, 102, 103]
  assert got["category_ids"].tolist() == [0, 1, 2, 0]
  bare = tf.train.Example()
  bare.features.feature["hist_item_ids"].int64_list.value.append(1)
  with pytest.raises(ValueError, match="differ in length"):
    infra_validator.rank_request_inputs([bare.SerializeToString()])
  bare.features.feature["hist_category_ids"].int64_list.value.append(1)
  bare.features.feature["hist_timestamps"].int64_list.value.append(1)
  with pytest.raises(ValueError, match="'item_id'"):
    infra_validator.rank_request_inputs([bare.SerializeToString()])


def test_rank_request_without_types_sends_pv(examples_file):
  # Example 1 has no types ((7 * 1) % 11 = 7 behaviours): all pv, as the
  # Transform reads an example without them.
  (example,) = infra_validator.read_examples([examples_file], limit=2)[1:]
  assert "hist_behavior_types" not in tf.train.Example.FromString(
      example).features.feature
  got = infra_validator.rank_request_inputs([example])
  assert got["hist_item_ids"].tolist() == list(range(501, 508))
  pv = features.BEHAVIOR_TYPES.index("pv")
  assert got["hist_behavior_types"].tolist() == [pv] * 7
  assert got["hist_behavior_types"].dtype == np.int64


def test_model_with_rank_is_blessed_after_calling_rank(tmp_path, examples_file):
  model_dir = _save_with_rank(str(tmp_path / "model"), _rank_good)
  examples = infra_validator.read_examples([examples_file], limit=11)
  out = str(tmp_path / "blessing")
  os.makedirs(out)
  result = infra_validator.validate(model_dir, examples, out)
  assert result.blessed, result.reasons
  assert result.report["rank_inputs"] == {
      "hist_item_ids": ["int64", [None]], "hist_category_ids": ["int64", [None]],
      "hist_timestamps": ["int64", [None]], "hist_behavior_types": ["int64", [None]],
      "item_ids": ["int64", [None]], "category_ids": ["int64", [None]],
      "request_timestamp": ["int64", []],
  }
  assert result.report["rank_outputs"] == {"probabilities": ["float32", [None]]}
  assert result.report["rank_requests"] == 1 and result.report["rank_candidates"] == 4
  # 2 serving_default requests (8 + 3 examples) and the rank request.
  assert result.report["requests"] == 3 == result.report["warmup_requests_written"]
  # Independent recomputation: user = example 3 (10 behaviours, t = 1,000,003,
  # types (3 + j) % 4 summing to 2 * 6 + 3 = 15), candidates items 100..103
  # with categories 0, 1, 2, 0.
  logits = (np.arange(4) * 0.1 + np.array([0, 1, 2, 0]) + 0.01 * 10 + 0.02 * 15
            - 0.001 * 3)
  expected = 1 / (1 + np.exp(-logits))
  assert result.report["rank_prediction_min"] == pytest.approx(expected.min(), rel=1e-6)
  assert result.report["rank_prediction_max"] == pytest.approx(expected.max(), rel=1e-6)
  warmup = os.path.join(out, infra_validator.STAMPED_MODEL_DIR, infra_validator.WARMUP_RELATIVE_PATH)
  logs = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
          for r in tf.data.TFRecordDataset(warmup)]
  assert [l.predict_log.request.model_spec.signature_name for l in logs] == [
      "serving_default", "serving_default", "rank"]


@pytest.mark.parametrize(
    "rank_fn,specs,reason",
    [
        (_rank_out_of_range, None, "rank: 4 outputs not finite in [0, 1]"),
        (_rank_one_output, None, "1 outputs for 4 rank candidates"),
        (_rank_float_candidates,
         [tf.TensorSpec([None], tf.float32, name="item_ids")
          if s.name == "item_ids" else s for s in _RANK_SPECS],
         "rank inputs"),
        (_rank_without_types, _RANK_SPECS[:_TYPES] + _RANK_SPECS[_TYPES + 1:],
         "rank inputs"),
    ],
    ids=["out-of-range", "wrong-length", "float-candidates", "no-behavior-types"],
)
def test_broken_rank_is_not_blessed(tmp_path, examples_file, rank_fn, specs, reason):
  model_dir = _save_with_rank(str(tmp_path / "model"), rank_fn, specs)
  examples = infra_validator.read_examples([examples_file], limit=11)
  out = str(tmp_path / "blessing")
  os.makedirs(out)
  result = infra_validator.validate(model_dir, examples, out)
  assert not result.blessed
  assert any(reason in r for r in result.reasons), result.reasons
  assert not os.path.exists(os.path.join(out, infra_validator.STAMPED_MODEL_DIR))


def test_warmup_request_missing_an_input_is_refused(tmp_path, examples_file):
  """TF Serving refuses a request without every signature input; so does the
  check, naming the inputs (a rank warm-up request without behaviour types)."""
  model_dir = _save_with_rank(str(tmp_path / "model"), _rank_good)
  examples = infra_validator.read_examples([examples_file], limit=11)
  inputs = infra_validator.rank_request_inputs(examples)
  del inputs["hist_behavior_types"]
  warmup = str(tmp_path / "warmup")
  infra_validator.write_warmup_requests(warmup, examples, rank_inputs=inputs)
  report = infra_validator.run_isolated_check(model_dir, warmup)
  assert not report["ok"]
  assert any("rank warm-up request inputs" in r and "hist_behavior_types" in r
             for r in report["reasons"]), report["reasons"]
