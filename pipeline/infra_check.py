"""Loads a SavedModel and replays TF Serving warm-up requests against it.

Run by `pipeline.infra_validator` in a SEPARATE, isolated process
(`python -I`, cwd outside the repository) so that it can import only
TensorFlow and the TF Serving API protos, never this project's code: if the
model needed our Python code (a py_function, a custom layer), loading or
calling it fails here as it would in TF Serving.

Checks: the `serving_default` signature takes exactly one rank-1 string input
(serialized tf.Example) and returns the expected float output, one value per
example; every warm-up request runs; every output is finite and in [0, 1].
Writes a JSON report; exits 0 whether or not the model passed (the report
says), non-zero only when the check itself could not run.
"""

import json
import math
import sys

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "SavedModel directory.")
flags.DEFINE_string("warmup_file", None, "TFRecord of PredictionLog requests.")
flags.DEFINE_string("output_key", "probabilities", "Expected output name.")
flags.DEFINE_string("report", None, "Where to write the JSON report.")

_OUR_PACKAGES = ("pipeline", "preprocessing", "trainer", "serving")


def check(model_dir, warmup_file, output_key):
  """Returns the report dict: {'ok': bool, 'reasons': [...], ...}."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=g-import-not-at-top

  reasons = []
  report = {"model_dir": model_dir, "reasons": reasons}
  try:
    model = tf.saved_model.load(model_dir)
  except Exception as e:  # pylint: disable=broad-except
    reasons.append(f"load failed: {type(e).__name__}: {str(e)[:500]}")
    return _finish(report)
  if "serving_default" not in model.signatures:
    reasons.append(f"no serving_default signature; has {sorted(model.signatures)}")
    return _finish(report)
  signature = model.signatures["serving_default"]
  _, input_specs = signature.structured_input_signature
  report["inputs"] = {k: [s.dtype.name, s.shape.as_list()] for k, s in input_specs.items()}
  output_specs = signature.structured_outputs
  report["outputs"] = {
      k: [s.dtype.name, s.shape.as_list()] for k, s in output_specs.items()
  }
  if len(input_specs) != 1:
    reasons.append(f"serving_default must take one input, takes {sorted(input_specs)}")
  else:
    (input_name, input_spec), = input_specs.items()
    if input_spec.dtype != tf.string or input_spec.shape.rank != 1:
      reasons.append(
          f"input {input_name!r} must be a rank-1 string tensor of serialized "
          f"tf.Example, is {input_spec.dtype.name} {input_spec.shape}"
      )
  if output_key not in output_specs:
    reasons.append(f"output {output_key!r} missing; outputs {sorted(output_specs)}")
  else:
    spec = output_specs[output_key]
    if not spec.dtype.is_floating:
      reasons.append(f"output {output_key!r} must be float, is {spec.dtype.name}")
    if spec.shape.rank not in (1, 2) or (spec.shape.rank == 2 and spec.shape[1] != 1):
      reasons.append(f"output {output_key!r} must be [B] or [B, 1], is {spec.shape}")
  if reasons:
    return _finish(report)

  requests = 0
  predictions = []
  for record in tf.data.TFRecordDataset(warmup_file):
    log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
    request = log.predict_log.request
    if request.model_spec.signature_name != "serving_default":
      reasons.append(f"warm-up request for signature {request.model_spec.signature_name!r}")
      continue
    feed = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
    try:
      result = signature(**{k: tf.constant(v) for k, v in feed.items()})
    except Exception as e:  # pylint: disable=broad-except
      reasons.append(f"warm-up request failed: {type(e).__name__}: {str(e)[:500]}")
      continue
    batch = len(next(iter(feed.values())))
    values = result[output_key].numpy().reshape(-1).tolist()
    if len(values) != batch:
      reasons.append(f"{len(values)} outputs for {batch} examples")
    predictions.extend(values)
    requests += 1
  report["requests"] = requests
  report["examples"] = len(predictions)
  if not requests:
    reasons.append("no warm-up request ran")
  bad = [p for p in predictions if not (math.isfinite(p) and 0.0 <= p <= 1.0)]
  if bad:
    reasons.append(f"{len(bad)} outputs not finite in [0, 1], e.g. {bad[:3]}")
  if predictions:
    report["prediction_min"] = min(predictions)
    report["prediction_max"] = max(predictions)
  leaked = sorted(m for m in sys.modules if m.split(".")[0] in _OUR_PACKAGES)
  if leaked:
    reasons.append(f"the check imported project modules {leaked}")
  return _finish(report)


def _finish(report):
  report["ok"] = not report["reasons"]
  return report


def main(argv):
  del argv
  report = check(FLAGS.model_dir, FLAGS.warmup_file, FLAGS.output_key)
  with open(FLAGS.report, "w") as f:
    json.dump(report, f, indent=1)


if __name__ == "__main__":
  flags.mark_flags_as_required(["model_dir", "warmup_file", "report"])
  app.run(main)
