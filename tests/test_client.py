"""Tests of the TF Serving client (serving/client.py), model-independent.

Requests are decoded with TensorFlow's own parsers (tf.make_ndarray,
tf.io.parse_example) and compared with the values put in; REST bodies with
hand-written bodies in TF Serving's documented shapes.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import pathlib
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from preprocessing import features
from serving import requests
from serving import transport

ROOT = pathlib.Path(__file__).resolve().parent.parent
T0 = 1_793_404_800  # 2026-10-31 00:00:00 UTC


def _rank(**overrides):
  values = dict(hist_item_ids=[11, 12, 13], hist_category_ids=[1, 1, 2],
                hist_timestamps=[T0 - 30, T0 - 20, T0 - 20],
                item_ids=[21, 22], category_ids=[2, 3], request_timestamp=T0,
                max_seq_len=8)
  values.update(overrides)
  return requests.RankRequest(**values)


def _example(**overrides):
  values = dict(user_id=7, item_id=21, category_id=2, timestamp=T0,
                hist_item_ids=[11, 12], hist_category_ids=[1, 2],
                hist_timestamps=[T0 - 9, T0 - 1], hist_behavior_types=[0, 3],
                max_seq_len=8)
  values.update(overrides)
  return requests.ExampleRequest(**values)


def _parse_spec(with_types: bool):
  spec = {}
  for f in features.ALL_FEATURES:
    if f is features.LABEL or (f is features.HIST_BEHAVIOR_TYPES
                               and not with_types):
      continue
    spec[f.name] = (tf.io.VarLenFeature(tf.int64) if f.is_sequence
                    else tf.io.FixedLenFeature([], tf.int64))
  return spec


def test_rank_predict_request_serializes_and_parses_back():
  rank = _rank()
  request = transport.rank_predict_request(rank, "eta", version_label="stable")
  parsed = predict_pb2.PredictRequest.FromString(request.SerializeToString())
  assert parsed == request
  assert parsed.model_spec.name == "eta"
  assert parsed.model_spec.signature_name == "rank"
  assert parsed.model_spec.version_label == "stable"
  tensors = transport.request_inputs(parsed)
  expected = {
      "hist_item_ids": [11, 12, 13], "hist_category_ids": [1, 1, 2],
      "hist_timestamps": [T0 - 30, T0 - 20, T0 - 20],
      "hist_behavior_types": [0, 0, 0],  # none given: all pv
      "item_ids": [21, 22], "category_ids": [2, 3],
  }
  assert set(tensors) == set(expected) | {"request_timestamp"}
  assert set(tensors) == set(features.RANK_INPUT_NAMES)
  for name, values in expected.items():
    assert tensors[name].dtype == np.int64
    np.testing.assert_array_equal(tensors[name], np.array(values, np.int64))
  assert tensors["request_timestamp"].shape == ()
  assert tensors["request_timestamp"] == T0


def test_rank_tensors_equal_tf_make_tensor_proto():
  request = transport.rank_predict_request(_rank(), version=3)
  assert request.model_spec.version.value == 3
  for name, proto in request.inputs.items():
    value = _rank().inputs()[name]
    reference = tf.make_tensor_proto(np.array(value, np.int64))
    assert proto.dtype == reference.dtype
    assert proto.tensor_shape == reference.tensor_shape
    np.testing.assert_array_equal(tf.make_ndarray(proto),
                                  tf.make_ndarray(reference))


def test_empty_history_is_a_valid_rank_request():
  rank = _rank(hist_item_ids=[], hist_category_ids=[], hist_timestamps=[])
  tensors = transport.request_inputs(transport.rank_predict_request(rank))
  for name in ("hist_item_ids", "hist_behavior_types"):
    assert tensors[name].shape == (0,)
    assert tensors[name].dtype == np.int64


def test_rank_behavior_types_reach_grpc_rest_and_the_examples():
  rank = _rank(hist_behavior_types=[3, 0, 2])
  assert rank.hist_behavior_types == (3, 0, 2)
  tensors = transport.request_inputs(transport.rank_predict_request(rank))
  np.testing.assert_array_equal(tensors["hist_behavior_types"], [3, 0, 2])
  assert tensors["hist_behavior_types"].dtype == np.int64
  body = json.loads(json.dumps(transport.rank_rest_body(rank)))
  assert body["inputs"]["hist_behavior_types"] == [3, 0, 2]
  assert list(body["inputs"]) == list(features.RANK_INPUT_NAMES)
  examples = requests.examples_for_candidates(rank, user_id=5)
  strings = [transport.serialize_example(e) for e in examples]
  got = tf.io.parse_example(strings, _parse_spec(with_types=True))
  np.testing.assert_array_equal(
      tf.sparse.to_dense(got["hist_behavior_types"]).numpy(), [[3, 0, 2]] * 2)


@pytest.mark.parametrize("types,message", [
    ([0, 4, 1], "must index"),
    ([0, -1, 1], r"hist_behavior_types\[1\] must be >= 0"),
    ([0, 1], "2 hist_behavior_types for 3 behaviours"),
    ([0, 1.0, 2], "must be an integer"),
])
def test_bad_rank_behavior_types_raise(types, message):
  with pytest.raises(requests.RequestError, match=message):
    _rank(hist_behavior_types=types)


@pytest.mark.parametrize("with_types", [True, False])
def test_examples_request_parses_as_training_examples(with_types):
  examples = [
      _example(hist_behavior_types=[0, 3] if with_types else None),
      _example(item_id=99, category_id=5, hist_item_ids=[], hist_category_ids=[],
               hist_timestamps=[],
               hist_behavior_types=[] if with_types else None),
  ]
  request = transport.examples_predict_request(examples, "eta")
  parsed = predict_pb2.PredictRequest.FromString(request.SerializeToString())
  assert parsed.model_spec.signature_name == "serving_default"
  strings = transport.request_inputs(parsed)["examples"]
  assert strings.shape == (2,)
  got = tf.io.parse_example(strings, _parse_spec(with_types))
  np.testing.assert_array_equal(got["item_id"], [21, 99])
  np.testing.assert_array_equal(got["category_id"], [2, 5])
  np.testing.assert_array_equal(got["user_id"], [7, 7])
  np.testing.assert_array_equal(got["timestamp"], [T0, T0])
  hist = tf.sparse.to_dense(got["hist_item_ids"]).numpy()
  np.testing.assert_array_equal(hist, [[11, 12], [0, 0]])
  np.testing.assert_array_equal(
      got["hist_timestamps"].values, [T0 - 9, T0 - 1])
  if with_types:
    np.testing.assert_array_equal(got["hist_behavior_types"].values, [0, 3])
  for serialized in strings:
    keys = set(tf.train.Example.FromString(serialized).features.feature)
    assert features.LABEL.name not in keys
    assert (features.HIST_BEHAVIOR_TYPES.name in keys) == with_types


def test_rank_rest_body_is_tf_serving_columnar_json():
  body = json.loads(json.dumps(transport.rank_rest_body(_rank())))
  assert body == {
      "signature_name": "rank",
      "inputs": {
          "hist_item_ids": [11, 12, 13],
          "hist_category_ids": [1, 1, 2],
          "hist_timestamps": [T0 - 30, T0 - 20, T0 - 20],
          "hist_behavior_types": [0, 0, 0],
          "item_ids": [21, 22],
          "category_ids": [2, 3],
          "request_timestamp": T0,
      },
  }


def test_examples_rest_body_is_tf_serving_row_json_with_b64():
  examples = [_example(), _example(item_id=30)]
  body = json.loads(json.dumps(transport.examples_rest_body(examples)))
  assert set(body) == {"signature_name", "instances"}
  assert body["signature_name"] == "serving_default"
  assert len(body["instances"]) == 2
  for instance, example in zip(body["instances"], examples):
    assert list(instance) == ["examples"]
    assert list(instance["examples"]) == ["b64"]
    decoded = base64.b64decode(instance["examples"]["b64"])
    assert decoded == transport.serialize_example(example)
    parsed = tf.train.Example.FromString(decoded)
    assert list(parsed.features.feature["item_id"].int64_list.value) == [
        example.item_id]


def test_examples_for_candidates_mirror_the_rank_request():
  rank = _rank()
  examples = requests.examples_for_candidates(rank, user_id=5)
  assert [(e.item_id, e.category_id) for e in examples] == [(21, 2), (22, 3)]
  assert all(e.hist_item_ids == (11, 12, 13) and e.timestamp == T0
             and e.user_id == 5 for e in examples)


def test_rest_url():
  assert transport.rest_url("h:8501") == "http://h:8501/v1/models/eta:predict"
  assert transport.rest_url("h:8501", "m", version=12) == (
      "http://h:8501/v1/models/m/versions/12:predict")
  assert transport.rest_url("h:8501", version_label="canary") == (
      "http://h:8501/v1/models/eta/labels/canary:predict")
  with pytest.raises(requests.RequestError, match="not both"):
    transport.rest_url("h:8501", version=1, version_label="stable")


@pytest.mark.parametrize("answer,expected", [
    ({"outputs": [0.25, 0.5]}, [0.25, 0.5]),
    ({"outputs": {"probabilities": [0.25, 0.5]}}, [0.25, 0.5]),
    ({"predictions": [0.25, 0.5]}, [0.25, 0.5]),
    ({"predictions": [[0.25], [0.5]]}, [0.25, 0.5]),
    ({"predictions": [{"probabilities": 0.25}, {"probabilities": 0.5}]},
     [0.25, 0.5]),
])
def test_probabilities_from_documented_rest_answers(answer, expected):
  assert transport.probabilities_from_rest_answer(answer) == expected


@pytest.mark.parametrize("answer", [
    {"error": "Servable not found"}, {"outputs": {"logits": [1.0]}}, {}])
def test_bad_rest_answers_raise(answer):
  with pytest.raises(transport.ServerError):
    transport.probabilities_from_rest_answer(answer)


@pytest.mark.parametrize("overrides,message", [
    ({"item_ids": [21, 2.0], "category_ids": [2, 3]},
     r"item_ids\[1\] must be an integer, got 2.0"),
    ({"item_ids": ["21", 22]}, r"item_ids\[0\] must be an integer"),
    ({"item_ids": [True, 22]}, r"item_ids\[0\] must be an integer"),
    ({"hist_item_ids": [11, -12, 13]}, r"hist_item_ids\[1\] must be >= 0"),
    ({"category_ids": [2, 1 << 63]}, "does not fit in int64"),
    ({"item_ids": "21,22"}, "must be a list of integers"),
    ({"hist_category_ids": [1, 1]}, "history lengths differ"),
    ({"hist_timestamps": [T0 - 3]}, "history lengths differ"),
    ({"category_ids": [2]}, "2 item_ids but 1 category_ids"),
    ({"item_ids": [], "category_ids": []}, "no candidates"),
    ({"max_seq_len": 2}, "more than max_seq_len=2"),
    ({"hist_timestamps": [T0 - 30, T0 - 20, T0]}, "strictly before"),
    ({"hist_timestamps": [T0 - 20, T0 - 30, T0 - 10]}, "oldest first"),
    ({"request_timestamp": -1}, "request_timestamp must be >= 0"),
    ({"max_seq_len": 0}, "max_seq_len must be an int in"),
    ({"max_seq_len": features.MAX_SUPPORTED_SEQ_LEN + 1},
     "max_seq_len must be an int in"),
])
def test_bad_rank_requests_raise_clear_errors(overrides, message):
  with pytest.raises(requests.RequestError, match=message):
    _rank(**overrides)


def test_numpy_integers_are_accepted_and_numpy_floats_rejected():
  rank = _rank(item_ids=np.array([21, 22], np.int64))
  assert rank.item_ids == (21, 22)
  assert all(type(v) is int for v in rank.item_ids)
  with pytest.raises(requests.RequestError, match="must be an integer"):
    _rank(item_ids=np.array([21.0, 22.0]))


@pytest.mark.parametrize("overrides,message", [
    ({"hist_behavior_types": [0, 4]}, "must index"),
    ({"hist_behavior_types": [0]}, "1 hist_behavior_types for 2"),
    ({"user_id": -7}, "user_id must be >= 0"),
    ({"timestamp": T0 - 5}, "strictly before"),
    ({"item_id": 1.5}, "item_id must be an integer"),
])
def test_bad_examples_raise_clear_errors(overrides, message):
  with pytest.raises(requests.RequestError, match=message):
    _example(**overrides)


def test_no_examples_is_an_error():
  with pytest.raises(requests.RequestError, match="no examples"):
    transport.examples_rest_body([])
  with pytest.raises(requests.RequestError, match="no examples"):
    transport.examples_predict_request([])


def test_history_from_rows_point_in_time_ties_and_truncation():
  rows = [
      f"7,101,1,pv,{T0 - 50}",
      f"8,999,9,buy,{T0 - 40}",  # another user
      f"7,103,3,fav,{T0 - 10}",
      f"7,102,2,cart,{T0 - 10}\r\n",  # same second: item 102 sorts first
      f"7,104,4,pv,{T0}",  # the request's second: excluded
      f"7,105,5,pv,{T0 + 5}",  # future
      f"7,100,1,buy,{T0 - 60}".encode(),  # out of order in the log; bytes
  ]
  items, categories, times, types = requests.history_from_rows(rows, 7, T0, 8)
  assert items == [100, 101, 102, 103]
  assert categories == [1, 1, 2, 3]
  assert times == [T0 - 60, T0 - 50, T0 - 10, T0 - 10]
  assert types == [3, 0, 1, 2]
  items, _, times, _ = requests.history_from_rows(rows, 7, T0, max_seq_len=1)
  assert items == [103] and times == [T0 - 10]
  assert requests.history_from_rows(rows, 42, T0, 8) == ([], [], [], [])


def test_history_from_rows_issue_example_skips_what_ingestion_rejects():
  # Issue 9's rows: timestamp 0 is rejected by ingestion, so training saw
  # [5, 9] ([9] with max_seq_len=1); the old client sent [111, 9, 5].
  rows = ["1,111,7,pv,0", "1,9,3,pv,1793400000", "1,5,3,pv,1793400000"]
  rejected = []
  items, _, _, _ = requests.history_from_rows(rows, 1, T0, 8, rejected=rejected)
  assert items == [5, 9]
  assert [(r.reason, r.source, r.line) for r in rejected] == [
      ("bad_timestamp", "row 1", "1,111,7,pv,0")]
  assert requests.history_from_rows(rows, 1, T0, 1, rejected=[])[0] == [9]
  with pytest.raises(requests.LogError, match="row 1: bad_timestamp"):
    requests.history_from_rows(rows, 1, T0, 8)


@pytest.mark.parametrize("row,message", [
    ("7,101,1,pv", "row 2: wrong_column_count: expected 5 columns, got 4"),
    ("7,x1,1,pv,1793400000", "row 2: non_numeric_id: item_id='x1'"),
    ("7,101,1,click,1793400000", "row 2: unknown_behavior_type: "
     "behavior_type='click'"),
    ("-7,101,1,pv,1793400000", "row 2: negative_id: user_id=-7"),
    ("7,101,1,pv,1.5", "row 2: bad_timestamp: timestamp='1.5'"),
    ("7,101,1,pv,0", "row 2: bad_timestamp: timestamp=0 outside"),
    ("7,101,1,pv,1793400000000", "row 2: bad_timestamp"),  # milliseconds
    ("", "row 2: empty_line"),
    (b"7,1\xff1,1,pv,1793400000", "row 2: bad_encoding: 'utf-8' codec"),
])
def test_history_from_rows_names_the_bad_row(row, message):
  rows = ["7,100,1,pv,1793400000", row]
  with pytest.raises(requests.LogError, match=message):
    requests.history_from_rows(rows, 7, T0, 8)
  rejected = []
  assert requests.history_from_rows(rows, 7, T0, 8, rejected=rejected)[0] == [100]
  assert len(rejected) == 1 and rejected[0].source == "row 2"


def test_history_from_rows_checks_its_arguments():
  with pytest.raises(requests.RequestError, match="request_timestamp=0 outside"):
    requests.history_from_rows([], 7, 0, 8)
  with pytest.raises(requests.RequestError, match="max_seq_len must be"):
    requests.history_from_rows([], 7, T0, 0)
  with pytest.raises(requests.RequestError, match="row 1: a row must be a log"):
    requests.history_from_rows([["7", "100", "1", "pv", "5"]], 7, T0, 8)


HEAVY_MODULES = "{'apache_beam', 'tfx', 'tensorflow', 'keras'}"


def _heavy_modules_after(code: str) -> str:
  """The heavy top-level modules loaded by `code` in a fresh interpreter."""
  code += ("\nimport sys; print(sorted({m.split('.')[0] for m in sys.modules}"
           f" & {HEAVY_MODULES}))")
  done = subprocess.run(
      [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
      env={**os.environ, "PYTHONPATH": str(ROOT)}, check=True)
  return done.stdout.strip()


@pytest.mark.parametrize("module", ["serving.client", "serving.requests",
                                    "serving.transport"])
def test_client_module_imports_no_beam_tfx_or_tensorflow(module):
  assert _heavy_modules_after(f"import {module}") == "[]"


def test_a_rank_rest_body_needs_no_tensorflow():
  code = ("from serving import requests, transport\n"
          "rank = requests.RankRequest([1], [2], [3], [4], [5], 10, 8)\n"
          "transport.rank_rest_body(rank)")
  assert _heavy_modules_after(code) == "[]"


def _closed_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_unreachable_server_gives_server_error():
  server = f"127.0.0.1:{_closed_port()}"
  with pytest.raises(transport.ServerError, match="failed"):
    transport.send_rest(transport.rank_rest_body(_rank()), transport.rest_url(server),
                     timeout_s=2)
  with pytest.raises(transport.ServerError, match="UNAVAILABLE|DEADLINE"):
    transport.send_grpc(transport.rank_predict_request(_rank()), server,
                     timeout_s=2)


def _run_cli(*args, cwd=ROOT):
  env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "PYTHONPATH": str(ROOT)}
  return subprocess.run([sys.executable, "-m", "serving.client", *args],
                        env=env, capture_output=True, text=True, cwd=cwd,
                        check=False)


def test_cli_prints_the_rest_body_from_a_log(tmp_path):
  log = tmp_path / "20261031.csv"
  log.write_text(f"7,101,1,pv,{T0 - 50}\n8,5,5,pv,{T0 - 49}\n"
                 f"7,102,2,buy,{T0 - 5}\n7,103,3,pv,{T0 + 1}\n")
  done = _run_cli(f"--behavior_log={tmp_path}/*.csv", "--user_id=7",
                  "--candidates=201:1,202:9", f"--request_timestamp={T0}")
  assert done.returncode == 0, done.stderr
  assert json.loads(done.stdout) == {
      "signature_name": "rank",
      "inputs": {"hist_item_ids": [101, 102], "hist_category_ids": [1, 2],
                 "hist_timestamps": [T0 - 50, T0 - 5],
                 "hist_behavior_types": [0, 3],
                 "item_ids": [201, 202], "category_ids": [1, 9],
                 "request_timestamp": T0},
  }
  bad = _run_cli(f"--behavior_log={tmp_path}/*.csv", "--user_id=7",
                 "--candidates=201:1,-202:9", f"--request_timestamp={T0}")
  assert bad.returncode != 0
  assert r"bad request: item_ids[1] must be >= 0, got -202" in bad.stderr
  assert "Traceback" not in bad.stderr
  missing = _run_cli(f"--behavior_log={tmp_path}/none*.csv", "--user_id=7",
                     "--candidates=201:1", f"--request_timestamp={T0}")
  assert missing.returncode != 0
  assert "no behaviour log matches" in missing.stderr


def test_readme_worked_request_is_what_the_cli_prints(tmp_path):
  section = (ROOT / "serving" / "README.md").read_text().split(
      "## The client", 1)[1].split("\n## ", 1)[0]
  blocks = section.split("```\n")[1::2]
  log, refused, skipped = blocks[0], blocks[1], blocks[2]
  (tmp_path / "behaviors.csv").write_text(log)
  args = ["--behavior_log=behaviors.csv", "--user_id=42",
          "--candidates=1001:7,5005:9", "--request_timestamp=1793491200"]
  one_line = lambda text: " ".join(text.replace("\\\n", " ").split())
  assert " ".join(args) in one_line(refused)
  expected_error = refused.splitlines()[-1].split(" outside ")[0]
  _one_line_error(_run_cli(*args, cwd=tmp_path), expected_error)
  assert " ".join(args[2:]) + " --max_seq_len=2 --skip_rejected_rows" in (
      one_line(skipped))
  done = _run_cli(*args, "--max_seq_len=2", "--skip_rejected_rows",
                  cwd=tmp_path)
  assert done.returncode == 0, done.stderr
  assert json.loads(done.stdout) == json.loads(skipped.splitlines()[-1])
  for line in skipped.splitlines()[3:-1]:
    assert line.split(" outside ")[0] in done.stderr


def test_cli_help_exits_0():
  done = _run_cli("--help")
  assert done.returncode == 0, done.stderr
  assert "skip_rejected_rows" in done.stdout
  assert _run_cli("--no_such_flag=1").returncode != 0


def test_readme_flag_table_names_every_cli_flag():
  section = (ROOT / "serving" / "README.md").read_text().split(
      "## The client", 1)[1].split("\n## ", 1)[0]
  documented = set(re.findall(r"`--(\w+)`", section.split("\n\n| flag |")[1]
                              .split("\n\n")[0]))
  done = _run_cli("--helpshort")
  assert done.returncode == 0, done.stderr
  defined = set(re.findall(r"^  --(?:\[no\])?(\w+)", done.stdout, re.M))
  assert documented == defined


def _one_line_error(done, expected):
  assert done.returncode != 0
  assert "Traceback" not in done.stderr
  lines = done.stderr.strip().splitlines()
  assert len(lines) == 1 and expected in lines[0], done.stderr


def test_cli_names_file_and_line_of_a_bad_log_row(tmp_path):
  log = tmp_path / "day.csv"
  log.write_bytes(f"7,101,1,pv,{T0 - 50}\n7,1\xff2,2,pv,{T0 - 5}\n".encode(
      "latin-1"))
  args = (f"--behavior_log={log}", "--user_id=7", "--candidates=201:1",
          f"--request_timestamp={T0}")
  _one_line_error(_run_cli(*args), f"bad behaviour log: {log}:2: bad_encoding")
  # Skipped on request, as ingestion skips it, and listed.
  done = _run_cli(*args, "--skip_rejected_rows")
  assert done.returncode == 0, done.stderr
  assert json.loads(done.stdout)["inputs"]["hist_item_ids"] == [101]
  assert f"skipped {log}:2: bad_encoding" in done.stderr
  assert "skipped 1 rows that ingestion rejects" in done.stderr


def test_cli_refuses_a_truncated_gz_log(tmp_path):
  whole = gzip.compress("".join(
      f"7,{100 + k},1,pv,{T0 - 500 + k}\n" for k in range(300)).encode())
  log = tmp_path / "day.csv.gz"
  log.write_bytes(whole[:len(whole) // 2])
  _one_line_error(
      _run_cli(f"--behavior_log={log}", "--user_id=7", "--candidates=201:1",
               f"--request_timestamp={T0}"),
      f"bad behaviour log: {log}: cannot read it to its end")
  log.write_bytes(whole)  # the whole file reads
  done = _run_cli(f"--behavior_log={log}", "--user_id=7", "--candidates=201:1",
                  f"--request_timestamp={T0}", "--max_seq_len=2")
  assert done.returncode == 0, done.stderr
  assert json.loads(done.stdout)["inputs"]["hist_item_ids"] == [398, 399]


# Deployment files: parsed with TF Serving's own protos where the pip package
# ships them (ModelServerConfig); the batching and monitoring messages are
# transcribed below from tensorflow_serving/servables/tensorflow/
# session_bundle_config.proto and tensorflow_serving/config/
# monitoring_config.proto (not in tensorflow-serving-api).
SERVING_DIR = ROOT / "serving"


def _transcribed_serving_messages():
  from google.protobuf import descriptor_pb2  # pylint: disable=g-import-not-at-top
  from google.protobuf import descriptor_pool  # pylint: disable=g-import-not-at-top
  from google.protobuf import message_factory  # pylint: disable=g-import-not-at-top
  from google.protobuf import wrappers_pb2  # pylint: disable=g-import-not-at-top

  field = descriptor_pb2.FieldDescriptorProto
  file_proto = descriptor_pb2.FileDescriptorProto(
      name="transcribed_serving.proto", package="transcribed",
      dependency=["google/protobuf/wrappers.proto"])

  def add(message_name, fields):
    message = file_proto.message_type.add(name=message_name)
    for number, (name, kind, type_name, repeated) in enumerate(fields, 1):
      message.field.add(
          name=name, number=number, type=kind, type_name=type_name,
          label=field.LABEL_REPEATED if repeated else field.LABEL_OPTIONAL)

  int64_value = ".google.protobuf.Int64Value"
  add("BatchingParameters", [
      ("max_batch_size", field.TYPE_MESSAGE, int64_value, False),
      ("batch_timeout_micros", field.TYPE_MESSAGE, int64_value, False),
      ("max_enqueued_batches", field.TYPE_MESSAGE, int64_value, False),
      ("num_batch_threads", field.TYPE_MESSAGE, int64_value, False),
      ("thread_pool_name", field.TYPE_MESSAGE,
       ".google.protobuf.StringValue", False),
      ("allowed_batch_sizes", field.TYPE_INT64, None, True),
      ("pad_variable_length_inputs", field.TYPE_BOOL, None, False),
  ])
  add("PrometheusConfig", [("enable", field.TYPE_BOOL, None, False),
                           ("path", field.TYPE_STRING, None, False)])
  add("MonitoringConfig", [("prometheus_config", field.TYPE_MESSAGE,
                            ".transcribed.PrometheusConfig", False)])
  pool = descriptor_pool.DescriptorPool()
  pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
  pool.Add(file_proto)
  factory = message_factory.MessageFactory(pool)  # protobuf 3.20 API
  return {name: factory.GetPrototype(
      pool.FindMessageTypeByName(f"transcribed.{name}"))
          for name in ("BatchingParameters", "MonitoringConfig")}


def test_models_config_is_a_valid_model_server_config():
  from google.protobuf import text_format  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.config import model_server_config_pb2  # pylint: disable=g-import-not-at-top

  config = text_format.Parse((SERVING_DIR / "models.config").read_text(),
                             model_server_config_pb2.ModelServerConfig())
  (model,) = config.model_config_list.config
  assert model.name == transport.DEFAULT_MODEL_NAME
  assert model.base_path == "/models/eta"
  assert model.model_platform == "tensorflow"
  assert model.model_version_policy.latest.num_versions == 2


def test_readme_rollback_config_is_valid_and_labels_loaded_versions():
  from google.protobuf import text_format  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.config import model_server_config_pb2  # pylint: disable=g-import-not-at-top

  readme = (SERVING_DIR / "README.md").read_text()
  section = readme.split("## Rollbacks by version label", 1)[1]
  block = section.split("```\n", 2)[1]
  config = text_format.Parse(block, model_server_config_pb2.ModelServerConfig())
  (model,) = config.model_config_list.config
  loaded = set(model.model_version_policy.specific.versions)
  assert set(model.version_labels) == {"stable", "canary"}
  assert set(model.version_labels.values()) <= loaded


def test_batching_and_monitoring_configs_parse():
  from google.protobuf import text_format  # pylint: disable=g-import-not-at-top

  messages = _transcribed_serving_messages()
  batching = text_format.Parse(
      (SERVING_DIR / "batching_parameters.txt").read_text(),
      messages["BatchingParameters"]())
  assert batching.max_batch_size.value >= 1
  assert batching.num_batch_threads.value >= 1
  assert 0 < batching.batch_timeout_micros.value <= 10_000
  monitoring = text_format.Parse(
      (SERVING_DIR / "monitoring.config").read_text(),
      messages["MonitoringConfig"]())
  assert monitoring.prometheus_config.enable
  assert monitoring.prometheus_config.path == "/monitoring/prometheus/metrics"
  # A misspelt field is rejected, so the check above has teeth.
  with pytest.raises(text_format.ParseError):
    text_format.Parse("max_batch_sise { value: 1 }",
                      messages["BatchingParameters"]())


def test_k8s_and_docker_line_match_the_config_files():
  import importlib.metadata  # pylint: disable=g-import-not-at-top

  manifest = (SERVING_DIR / "k8s.yaml").read_text()
  readme = (SERVING_DIR / "README.md").read_text()
  tag = importlib.metadata.version("tensorflow-serving-api")
  images = {line.split("image:")[1].strip()
            for line in manifest.splitlines() if "image:" in line}
  assert images == {f"tensorflow/serving:{tag}"}
  assert f"tensorflow/serving:{tag}" in readme
  assert manifest.count("kind: Deployment") == 2
  assert manifest.count("kind: Service") == 2
  # Files the ConfigMap is made from, and the flags that read them, exist.
  for name in ("models.config", "batching_parameters.txt",
               "monitoring.config"):
    assert (SERVING_DIR / name).is_file()
    assert f"--from-file=serving/{name}" in manifest
    assert f"/config/{name}" in manifest
  assert "prometheus.io/path: /monitoring/prometheus/metrics" in manifest
  for port in ("8500", "8501"):
    assert f"containerPort: {port}" in manifest
    assert f"-p {port}:{port}" in readme
  # Batching only in the batch deployment.
  online, batch = manifest.split("name: eta-serving-batch", 1)
  assert "--enable_batching" not in online
  assert "--enable_batching=true" in batch
