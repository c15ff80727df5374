"""Offline infra validation: the stand-in for TFX's InfraValidator.

TFX's InfraValidator needs Docker or Kubernetes to start TF Serving; neither
is available here, so `OfflineInfraValidator` checks what we can check
without the server binary:

1. It copies the candidate SavedModel to `<blessing>/stamped_model/` and
   writes TF Serving warm-up requests (`assets.extra/tf_serving_warmup_requests`,
   a TFRecord of PredictionLog with `serving_default` PredictRequests built
   from held-out examples, labels removed) into that copy.
2. It runs `pipeline/infra_check.py` in a separate isolated process
   (`python -I`, cwd outside the repository: it can import only TensorFlow and
   the TF Serving protos), which loads the copy, checks the signature's input
   and output spec and replays every warm-up request, checking that outputs
   are finite and in [0, 1].
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
from typing import Sequence

from preprocessing import features

CHECK_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "infra_check.py")
WARMUP_RELATIVE_PATH = os.path.join("assets.extra", "tf_serving_warmup_requests")
STAMPED_MODEL_DIR = "stamped_model"  # tfx.utils.path_constants.STAMPED_MODEL_DIR
REPORT_FILE = "infra_validation.json"
BLESSED_KEY = "blessed"
HAS_MODEL_KEY = "has_model"
INPUT_NAME = features.SERVING_EXAMPLES_KEY
# One request per this many examples, as TF Serving replays them one by one.
REQUEST_BATCH_SIZE = 8


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
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

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


def write_warmup_requests(
    path: str, serialized_examples: Sequence[bytes], batch_size: int = REQUEST_BATCH_SIZE
) -> int:
  """Writes PredictionLog warm-up requests for `serving_default`; returns their count."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import model_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=g-import-not-at-top

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
  return count


def run_isolated_check(
    model_dir: str, warmup_file: str, output_key: str = features.PROBABILITIES_KEY,
    timeout_seconds: int = 300,
) -> dict:
  """Runs infra_check.py in a fresh isolated Python; returns its JSON report."""
  with tempfile.TemporaryDirectory() as workdir:
    report_path = os.path.join(workdir, "report.json")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [
        sys.executable, "-I", CHECK_SCRIPT,
        f"--model_dir={model_dir}", f"--warmup_file={warmup_file}",
        f"--output_key={output_key}", f"--report={report_path}",
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
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  stamped = os.path.join(output_dir, STAMPED_MODEL_DIR)
  if tf.io.gfile.exists(stamped):
    tf.io.gfile.rmtree(stamped)
  _copy_tree(model_dir, stamped)
  warmup_file = os.path.join(stamped, WARMUP_RELATIVE_PATH)
  requests = write_warmup_requests(warmup_file, serialized_examples)
  report = run_isolated_check(stamped, warmup_file, output_key, timeout_seconds)
  report["warmup_requests_written"] = requests
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
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  if "://" not in source and "://" not in destination:
    shutil.copytree(source, destination)
    return
  for directory, _, files in tf.io.gfile.walk(source):
    target = os.path.join(destination, os.path.relpath(directory, source))
    tf.io.gfile.makedirs(target)
    for name in files:
      tf.io.gfile.copy(os.path.join(directory, name), os.path.join(target, name))
