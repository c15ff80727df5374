"""Offline infra validation: the stand-in for TFX's InfraValidator.

TFX's InfraValidator needs Docker or Kubernetes to start TF Serving; neither
is available here, so `OfflineInfraValidator` checks what we can check
without the server binary:

1. It copies the candidate SavedModel to `<blessing>/stamped_model/` and
   writes TF Serving warm-up requests (`assets.extra/tf_serving_warmup_requests`,
   a TFRecord of PredictionLog with `serving_default` PredictRequests built
   from held-out examples, labels removed) into that copy. When the model
   has the `rank` signature, one more request for it with every input of
   `features.RANK_INPUT_NAMES`: the held-out user with the longest history
   (behaviour types included; pv for each behaviour when the examples have
   none) and the first few held-out candidates.
2. It runs `pipeline/infra_check.py` in a separate isolated process
   (`python -I`, cwd outside the repository: it can import only TensorFlow and
   the TF Serving protos), which loads the copy, checks the signatures' input
   and output specs and replays every warm-up request, checking that outputs
   are finite, in [0, 1] and one per example or candidate.
3. It emits an InfraBlessing with `blessed` = 1 or 0 and, when blessed,
   `has_model` = 1: the Pusher (given no `model` input) then pushes the
   stamped copy, so the warm-up file ends up in the served version directory,
   as with TFX's InfraValidator and `make_warmup`.

The candidate Model artifact is never modified (artifacts are immutable and
cached). The TFX component wrapping this is
`pipeline.components.OfflineInfraValidator`.
"""


import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Optional, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.apis import predict_pb2
from tensorflow_serving.apis import prediction_log_pb2

from preprocessing import features
from preprocessing import history

CHECK_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "infra_check.py")
WARMUP_RELATIVE_PATH = os.path.join("assets.extra", "tf_serving_warmup_requests")
STAMPED_MODEL_DIR = "stamped_model"  # tfx.utils.path_constants.STAMPED_MODEL_DIR
REPORT_FILE = "infra_validation.json"
BLESSED_KEY = "blessed"
HAS_MODEL_KEY = "has_model"
INPUT_NAME = features.SERVING_EXAMPLES_KEY
# One request per this many examples, as TF Serving replays them one by one.
REQUEST_BATCH_SIZE = 8
# Candidates in the `rank` warm-up request.
RANK_CANDIDATES = 4


def rank_input_spec() -> dict[str, list]:
  """The `rank` signature's contract (features.RANK_INPUT_NAMES) as
  infra_check reports specs: int64 [L] or [N] lists and the int64 scalar
  request time."""
  return {
      name: ["int64", [] if name == features.RANK_REQUEST_TIMESTAMP_KEY else [None]]
      for name in features.RANK_INPUT_NAMES
  }


@dataclasses.dataclass(frozen=True)
class InfraValidationResult:
  """Outcome of one offline infra validation."""

  blessed: bool
  reasons: tuple[str, ...]
  report: dict


def read_examples(
    file_patterns: Sequence[str], limit: int, drop_features: Sequence[str] = (features.LABEL.name,)
) -> list[bytes]:
  """Reads up to `limit` serialized tf.Examples (GZIP TFRecords), without labels.

  Raises:
    ValueError: no file matches, or the files hold no example.
  """

  files = sorted(f for pattern in file_patterns for f in tf.io.gfile.glob(pattern))
  if not files:
    raise ValueError(f"no example files match {list(file_patterns)}")
  serialized = []
  for record in tf.data.TFRecordDataset(files, compression_type="GZIP").take(limit):
    example = tf.train.Example.FromString(record.numpy())
    for name in drop_features:
      if name in example.features.feature:
        del example.features.feature[name]
    serialized.append(example.SerializeToString())
  if not serialized:
    raise ValueError(f"no examples in {files}")
  return serialized


def signature_names(model_dir: str) -> set[str]:
  """Signature names in `model_dir/saved_model.pb`, read from the proto (the
  model is not loaded in this process); empty when there is no such file."""

  path = os.path.join(model_dir, "saved_model.pb")
  if not tf.io.gfile.exists(path):
    return set()
  saved_model = saved_model_pb2.SavedModel()
  with tf.io.gfile.GFile(path, "rb") as f:
    saved_model.ParseFromString(f.read())
  return {name for graph in saved_model.meta_graphs for name in graph.signature_def}


def rank_request_inputs(
    serialized_examples: Sequence[bytes], num_candidates: int = RANK_CANDIDATES
) -> dict:
  """One `rank` request from held-out examples: the history of the example
  with the longest one (the first such), its impression time as the request
  time, and the candidates of the first `num_candidates` examples. Behaviour
  types are the example's, or pv for each behaviour when it has none (a log
  without types), as the Transform reads such an example.

  Returns:
    {input name: numpy int64 array}, every features.RANK_INPUT_NAMES in that
    order: [L] history lists, [N] candidates, a scalar request time.

  Raises:
    ValueError: no example, one lacks a candidate or time feature, or the
      history's lists differ in length.
  """

  if not serialized_examples:
    raise ValueError("no held-out example to build a rank request from")
  parsed = [tf.train.Example.FromString(s) for s in serialized_examples]

  def values(example, name):
    feature = example.features.feature
    return list(feature[name].int64_list.value) if name in feature else []

  def scalar(example, name):
    found = values(example, name)
    if len(found) != 1:
      raise ValueError(f"held-out example has {len(found)} values of {name!r}, expected 1")
    return found[0]

  user = max(parsed, key=lambda e: len(values(e, features.HIST_ITEM_IDS.name)))
  candidates = parsed[:num_candidates]
  hist = {f.name: values(user, f.name) for f in features.RANK_HISTORY_FEATURES}
  length = len(hist[features.HIST_ITEM_IDS.name])
  types = features.HIST_BEHAVIOR_TYPES.name
  hist[types] = history.rank_behavior_types(hist[types], length)
  lengths = {name: len(v) for name, v in hist.items()}
  if set(lengths.values()) != {length}:
    raise ValueError(f"held-out example's history lists differ in length: {lengths}")
  inputs = {name: np.array(v, np.int64) for name, v in hist.items()}
  inputs[features.RANK_ITEM_IDS_KEY] = np.array(
      [scalar(e, features.ITEM_ID.name) for e in candidates], np.int64)
  inputs[features.RANK_CATEGORY_IDS_KEY] = np.array(
      [scalar(e, features.CATEGORY_ID.name) for e in candidates], np.int64)
  inputs[features.RANK_REQUEST_TIMESTAMP_KEY] = np.array(
      scalar(user, features.TIMESTAMP.name), np.int64)
  return {name: inputs[name] for name in features.RANK_INPUT_NAMES}


def write_warmup_requests(
    path: str, serialized_examples: Sequence[bytes], batch_size: int = REQUEST_BATCH_SIZE,
    rank_inputs: Optional[dict] = None,
) -> int:
  """Writes PredictionLog warm-up requests for `serving_default` (and one for
  `rank` with `rank_inputs` when given); returns their count."""

  tf.io.gfile.makedirs(os.path.dirname(path))
  count = 0
  with tf.io.TFRecordWriter(path) as writer:
    for start in range(0, len(serialized_examples), batch_size):
      batch = list(serialized_examples[start:start + batch_size])
      request = predict_pb2.PredictRequest(
          model_spec=model_pb2.ModelSpec(signature_name="serving_default")
      )
      request.inputs[INPUT_NAME].CopyFrom(
          tf.make_tensor_proto(batch, dtype=tf.string, shape=[len(batch)])
      )
      log = prediction_log_pb2.PredictionLog(
          predict_log=prediction_log_pb2.PredictLog(request=request)
      )
      writer.write(log.SerializeToString())
      count += 1
    if rank_inputs is not None:
      request = predict_pb2.PredictRequest(
          model_spec=model_pb2.ModelSpec(signature_name=features.RANK_SIGNATURE)
      )
      for name, value in rank_inputs.items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
      writer.write(prediction_log_pb2.PredictionLog(
          predict_log=prediction_log_pb2.PredictLog(request=request)
      ).SerializeToString())
      count += 1
  return count


def run_isolated_check(
    model_dir: str, warmup_file: str, output_key: str = features.PROBABILITIES_KEY,
    timeout_seconds: int = 300,
) -> dict:
  """Runs infra_check.py in a fresh isolated Python; returns its JSON report.

  The `rank` signature, when the model has it, is checked against
  `rank_input_spec()`."""
  with tempfile.TemporaryDirectory() as workdir:
    report_path = os.path.join(workdir, "report.json")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [
        sys.executable, "-I", CHECK_SCRIPT,
        f"--model_dir={model_dir}", f"--warmup_file={warmup_file}",
        f"--output_key={output_key}", f"--report={report_path}",
        f"--rank_signature={features.RANK_SIGNATURE}",
        f"--rank_inputs={json.dumps(rank_input_spec())}",
        f"--rank_candidates_input={features.RANK_ITEM_IDS_KEY}",
    ]
    try:
      done = subprocess.run(
          command, cwd=workdir, env=env, capture_output=True, text=True,
          timeout=timeout_seconds, check=False,
      )
    except subprocess.TimeoutExpired:
      return {"ok": False, "reasons": [f"check timed out after {timeout_seconds} s"]}
    if done.returncode != 0 or not os.path.exists(report_path):
      return {
          "ok": False,
          "reasons": [f"check process exited {done.returncode}: {done.stderr[-2000:]}"],
      }
    with open(report_path) as f:
      return json.load(f)


def validate(
    model_dir: str,
    serialized_examples: Sequence[bytes],
    output_dir: str,
    output_key: str = features.PROBABILITIES_KEY,
    timeout_seconds: int = 300,
) -> InfraValidationResult:
  """Copies the model under `output_dir/stamped_model`, adds warm-up requests,
  checks the copy in an isolated process, and writes the report to
  `output_dir/infra_validation.json`. The copy is removed when not blessed."""

  stamped = os.path.join(output_dir, STAMPED_MODEL_DIR)
  if tf.io.gfile.exists(stamped):
    tf.io.gfile.rmtree(stamped)
  _copy_tree(model_dir, stamped)
  warmup_file = os.path.join(stamped, WARMUP_RELATIVE_PATH)
  rank_inputs, rank_problem = None, None
  if features.RANK_SIGNATURE in signature_names(stamped):
    try:
      rank_inputs = rank_request_inputs(serialized_examples)
    except ValueError as e:
      rank_problem = f"cannot build a {features.RANK_SIGNATURE} request: {e}"
  requests = write_warmup_requests(
      warmup_file, serialized_examples, rank_inputs=rank_inputs)
  report = run_isolated_check(stamped, warmup_file, output_key, timeout_seconds)
  report["warmup_requests_written"] = requests
  if rank_problem:
    report["ok"] = False
    report.setdefault("reasons", []).append(rank_problem)
  blessed = bool(report.get("ok")) and report.get("requests") == requests
  if report.get("ok") and not blessed:
    report.setdefault("reasons", []).append(
        f"{report.get('requests')} of {requests} warm-up requests ran"
    )
  if not blessed:
    tf.io.gfile.rmtree(stamped)
  with tf.io.gfile.GFile(os.path.join(output_dir, REPORT_FILE), "w") as f:
    f.write(json.dumps(report, indent=1))
  return InfraValidationResult(blessed, tuple(report.get("reasons", ())), report)


def _copy_tree(source: str, destination: str) -> None:

  if "://" not in source and "://" not in destination:
    shutil.copytree(source, destination)
    return
  for directory, _, files in tf.io.gfile.walk(source):
    target = os.path.join(destination, os.path.relpath(directory, source))
    tf.io.gfile.makedirs(target)
    for name in files:
      tf.io.gfile.copy(os.path.join(directory, name), os.path.join(target, name))
