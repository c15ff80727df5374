"""Loads a SavedModel and replays TF Serving warm-up requests against it.

Run by `pipeline.infra_validator` in a SEPARATE, isolated process
(`python -I`, cwd outside the repository) so that it can import only
TensorFlow and the TF Serving API protos, never this project's code: if the
model needed our Python code (a py_function, a custom layer), loading or
calling it fails here as it would in TF Serving.

Checks: the `serving_default` signature takes exactly one rank-1 string input
(serialized tf.Example) and returns the expected float output, one value per
example; when the model has the `rank` signature (one user's history with
behaviour types, and N candidates), its inputs are exactly the expected
names, dtypes and shapes (`--rank_inputs`, from the feature registry's
RANK_INPUT_NAMES) and its output is a float [N]; every warm-up request
carries exactly its signature's inputs (TF Serving refuses a request with an
input missing or extra) and runs; every output is finite and in [0, 1] and
there is one per example (serving_default) or per candidate (rank).
Writes a JSON report; exits 0 whether or not the model passed (the report
says), non-zero only when the check itself could not run.
"""

import json
import math
import sys

from absl import app
from absl import flags

FLAGS = flags.FLAGS
def _define_flags() -> None:
  # Defined only when run as a program, so that other modules (tests,
  # other entry points) can import this one: absl flags are global.
  flags.DEFINE_string("model_dir", None, "SavedModel directory.")
  flags.DEFINE_string("warmup_file", None, "TFRecord of PredictionLog requests.")
  flags.DEFINE_string("output_key", "probabilities", "Expected output name.")
  flags.DEFINE_string("report", None, "Where to write the JSON report.")
  flags.DEFINE_string("rank_signature", "rank", "Name of the optional ranking signature.")
  flags.DEFINE_string(
      "rank_inputs", None,
      'JSON {input name: [dtype, shape]} the ranking signature must take, e.g. '
      '{"hist_behavior_types": ["int64", [null]], "item_ids": ["int64", [null]], '
      '"request_timestamp": ["int64", []]}.',
  )
  flags.DEFINE_string(
      "rank_candidates_input", "item_ids",
      "The ranking input holding the N candidates (one output per candidate).",
  )

_OUR_PACKAGES = ("pipeline", "preprocessing", "trainer", "serving")


def check(model_dir, warmup_file, output_key, rank_signature="rank",
          rank_inputs=None, rank_candidates_input="item_ids"):
  """Returns the report dict: {'ok': bool, 'reasons': [...], ...}.

  `rank_inputs`: {name: [dtype name, shape list]} the `rank_signature` must
  take when the model has it (None: any inputs).
  """
  # TensorFlow (~5 s) loads here, not at import: --help answers at once.
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
  rank = model.signatures.get(rank_signature) if rank_signature else None
  if rank is not None:
    reasons.extend(_check_rank_spec(rank, rank_signature, rank_inputs, output_key, report))
  if reasons:
    return _finish(report)

  signatures = {"serving_default": signature}
  if rank is not None:
    signatures[rank_signature] = rank
  requests = {name: 0 for name in signatures}
  predictions = {name: [] for name in signatures}
  for record in tf.data.TFRecordDataset(warmup_file):
    log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
    request = log.predict_log.request
    name = request.model_spec.signature_name
    if name not in signatures:
      reasons.append(f"warm-up request for signature {name!r}, which the model lacks")
      continue
    feed = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
    expected_inputs = set(signatures[name].structured_input_signature[1])
    if set(feed) != expected_inputs:
      reasons.append(
          f"{name} warm-up request inputs {sorted(feed)} differ from the "
          f"signature's {sorted(expected_inputs)}")
      continue
    try:
      result = signatures[name](**{k: tf.constant(v) for k, v in feed.items()})
    except Exception as e:  # pylint: disable=broad-except
      reasons.append(f"{name} warm-up request failed: {type(e).__name__}: {str(e)[:500]}")
      continue
    if name == "serving_default":
      expected, unit = len(next(iter(feed.values()))), "examples"
    else:
      expected, unit = feed[rank_candidates_input].size, f"{name} candidates"
    values = result[output_key].numpy().reshape(-1).tolist()
    if len(values) != expected:
      reasons.append(f"{len(values)} outputs for {expected} {unit}")
    predictions[name].extend(values)
    requests[name] += 1
  report["requests"] = sum(requests.values())
  report["examples"] = len(predictions["serving_default"])
  if not requests["serving_default"]:
    reasons.append("no serving_default warm-up request ran")
  if rank is not None:
    report["rank_requests"] = requests[rank_signature]
    report["rank_candidates"] = len(predictions[rank_signature])
    if not requests[rank_signature]:
      reasons.append(f"no {rank_signature} warm-up request ran")
  for name, values in predictions.items():
    bad = [p for p in values if not (math.isfinite(p) and 0.0 <= p <= 1.0)]
    if bad:
      reasons.append(f"{name}: {len(bad)} outputs not finite in [0, 1], e.g. {bad[:3]}")
    if values:
      prefix = "" if name == "serving_default" else f"{name}_"
      report[f"{prefix}prediction_min"] = min(values)
      report[f"{prefix}prediction_max"] = max(values)
  leaked = sorted(m for m in sys.modules if m.split(".")[0] in _OUR_PACKAGES)
  if leaked:
    reasons.append(f"the check imported project modules {leaked}")
  return _finish(report)


def _spec_dict(specs):
  return {k: [s.dtype.name, s.shape.as_list()] for k, s in specs.items()}


def _check_rank_spec(rank, name, expected_inputs, output_key, report):
  """Reasons the ranking signature's inputs/outputs differ from the contract."""
  reasons = []
  _, input_specs = rank.structured_input_signature
  report["rank_inputs"] = _spec_dict(input_specs)
  report["rank_outputs"] = _spec_dict(rank.structured_outputs)
  if expected_inputs is not None and report["rank_inputs"] != expected_inputs:
    reasons.append(
        f"{name} inputs {report['rank_inputs']} differ from the expected {expected_inputs}"
    )
  outputs = rank.structured_outputs
  if output_key not in outputs:
    reasons.append(f"{name} output {output_key!r} missing; outputs {sorted(outputs)}")
  elif not outputs[output_key].dtype.is_floating or outputs[output_key].shape.rank != 1:
    reasons.append(
        f"{name} output {output_key!r} must be a float [N], is "
        f"{outputs[output_key].dtype.name} {outputs[output_key].shape}"
    )
  return reasons


def _finish(report):
  report["ok"] = not report["reasons"]
  return report


def main(argv):
  del argv
  rank_inputs = json.loads(FLAGS.rank_inputs) if FLAGS.rank_inputs else None
  report = check(
      FLAGS.model_dir, FLAGS.warmup_file, FLAGS.output_key,
      FLAGS.rank_signature, rank_inputs, FLAGS.rank_candidates_input,
  )
  with open(FLAGS.report, "w") as f:
    json.dump(report, f, indent=1)


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["model_dir", "warmup_file", "report"])
  app.run(main)
