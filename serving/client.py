"""Client for the ETA model in TF Serving: build, validate, send requests.

Two signatures (names from the feature registry):
- `rank` (inputs `features.RANK_INPUT_NAMES`): one user's history
  (`hist_item_ids`, `hist_category_ids`, `hist_timestamps`,
  `hist_behavior_types`, int64 [L], oldest first, L <= max_seq_len; types are
  the ingestion's codes, the index into `features.BEHAVIOR_TYPES`, all pv
  when the log has none) and N candidates (`item_ids`, `category_ids`, int64
  [N]) at `request_timestamp` (int64 scalar) -> `probabilities` float32 [N].
- `serving_default`: serialized tf.Examples in the training format, label
  absent (`examples`, string [B]) -> `probabilities` float32 [B].

Histories are built from a behaviour log by ingestion's own rule
(`preprocessing.history`: ingestion's row parsing and validation, strictly
before the request, the same-second tie order, the max_seq_len cut), so a
request carries the history the model was trained with. Requests are
validated before anything is built: non-integer or negative ids, mismatched
lengths, no candidates, L > max_seq_len, unknown behaviour types, a history
not strictly before the request or not oldest first all raise RequestError
with the reason. The gRPC PredictRequest (tensorflow-serving-api) and the
REST JSON body (TF Serving's documented `inputs` columnar and `instances` row
formats) carry the same tensors. Nothing is sent unless a server is given.

This module imports no Beam, TFX or TensorFlow; TensorFlow's protos are
imported only when a gRPC request or a tf.Example is built.

Usage (prints the REST body; add --server=HOST:PORT to send it):
  python -m serving.client --behavior_log=DIR/behaviors/*.csv --user_id=42 \
      --candidates=1001:7,1002:7 --request_timestamp=1793491200
"""

from __future__ import annotations

import base64
import dataclasses
import glob
import gzip
import json
import numbers
import sys
from typing import Any, Iterable, Optional, Sequence, Union
import zlib

from preprocessing import features
from preprocessing import history as history_rule
from preprocessing import raw_logs

INT64_MAX = (1 << 63) - 1
# The id and time lists of a history; behaviour types are checked apart
# (optional in a tf.Example, all pv in a rank request without them).
HISTORY_KEYS = (features.HIST_ITEM_IDS.name, features.HIST_CATEGORY_IDS.name,
                features.HIST_TIMESTAMPS.name)
TYPES_KEY = features.HIST_BEHAVIOR_TYPES.name
DEFAULT_MODEL_NAME = "eta"


class RequestError(ValueError):
  """A request that must not be sent; the message says what is wrong."""


class LogError(RequestError):
  """The behaviour log cannot give a history: a row ingestion would reject
  (named by file and line, with ingestion's reason), or an unreadable file."""


class ServerError(RuntimeError):
  """The server could not be reached or answered with an error."""


def _int_list(name: str, values: Any) -> tuple[int, ...]:
  """Validates a list of non-negative int64 values (no bools, floats, str)."""
  if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
    raise RequestError(f"{name} must be a list of integers, got {values!r}")
  result = []
  for i, value in enumerate(values):
    result.append(_int_value(f"{name}[{i}]", value))
  return tuple(result)


def _int_value(name: str, value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise RequestError(
        f"{name} must be an integer, got {value!r} ({type(value).__name__})")
  value = int(value)
  if value < 0:
    raise RequestError(f"{name} must be >= 0, got {value}")
  if value > INT64_MAX:
    raise RequestError(f"{name} does not fit in int64: {value}")
  return value


def _check_history(item_ids, category_ids, timestamps, before, max_seq_len,
                   what):
  """Common rules of a history: equal lengths, <= max_seq_len, sorted, past."""
  lengths = {features.HIST_ITEM_IDS.name: len(item_ids),
             features.HIST_CATEGORY_IDS.name: len(category_ids),
             features.HIST_TIMESTAMPS.name: len(timestamps)}
  if len(set(lengths.values())) != 1:
    raise RequestError(f"{what}: history lengths differ: {lengths}")
  if len(item_ids) > max_seq_len:
    raise RequestError(
        f"{what}: history has {len(item_ids)} behaviours, more than "
        f"max_seq_len={max_seq_len}; send the most recent {max_seq_len}")
  if any(a > b for a, b in zip(timestamps, timestamps[1:])):
    raise RequestError(f"{what}: hist_timestamps must be oldest first")
  if timestamps and timestamps[-1] >= before:
    raise RequestError(
        f"{what}: every behaviour must be strictly before the request "
        f"({before}); the last is at {timestamps[-1]}")


def _check_max_seq_len(max_seq_len):
  try:
    history_rule.check_max_seq_len(max_seq_len)
  except ValueError as error:
    raise RequestError(str(error)) from None


def _behavior_types(values, length: int, what: str) -> tuple[int, ...]:
  """Validated behaviour type codes, one per behaviour."""
  types = _int_list(TYPES_KEY, values)
  if len(types) != length:
    raise RequestError(
        f"{what}: {len(types)} {TYPES_KEY} for {length} behaviours")
  if any(t >= len(features.BEHAVIOR_TYPES) for t in types):
    raise RequestError(
        f"{what}: {TYPES_KEY} must index {features.BEHAVIOR_TYPES}, got "
        f"{sorted(set(types))}")
  return types


@dataclasses.dataclass(frozen=True)
class RankRequest:
  """One user's history and N candidates for the `rank` signature.

  Constructing it validates it (RequestError); fields become tuples of int.
  `hist_behavior_types` are the ingestion's codes (index into
  features.BEHAVIOR_TYPES); None (a log without types) sends pv for every
  behaviour, as ingestion and the Transform count them.
  """

  hist_item_ids: Sequence[int]
  hist_category_ids: Sequence[int]
  hist_timestamps: Sequence[int]
  item_ids: Sequence[int]
  category_ids: Sequence[int]
  request_timestamp: int
  max_seq_len: int = features.DEFAULT_MAX_SEQ_LEN
  hist_behavior_types: Optional[Sequence[int]] = None

  def __post_init__(self):
    _check_max_seq_len(self.max_seq_len)
    for name in HISTORY_KEYS + (features.RANK_ITEM_IDS_KEY,
                                features.RANK_CATEGORY_IDS_KEY):
      object.__setattr__(self, name, _int_list(name, getattr(self, name)))
    object.__setattr__(self, "request_timestamp", _int_value(
        features.RANK_REQUEST_TIMESTAMP_KEY, self.request_timestamp))
    if not self.item_ids:
      raise RequestError("rank request: no candidates (item_ids is empty)")
    if len(self.item_ids) != len(self.category_ids):
      raise RequestError(
          f"rank request: {len(self.item_ids)} item_ids but "
          f"{len(self.category_ids)} category_ids")
    _check_history(self.hist_item_ids, self.hist_category_ids,
                   self.hist_timestamps, self.request_timestamp,
                   self.max_seq_len, "rank request")
    types = self.hist_behavior_types
    if types is None:
      types = history_rule.rank_behavior_types(None, len(self.hist_item_ids))
    object.__setattr__(self, "hist_behavior_types", _behavior_types(
        types, len(self.hist_item_ids), "rank request"))

  def inputs(self) -> dict[str, Any]:
    """Signature input name -> list of ints (int for the scalar), in
    features.RANK_INPUT_NAMES order."""
    values = {
        features.RANK_ITEM_IDS_KEY: list(self.item_ids),
        features.RANK_CATEGORY_IDS_KEY: list(self.category_ids),
        features.RANK_REQUEST_TIMESTAMP_KEY: self.request_timestamp,
    }
    for feature in features.RANK_HISTORY_FEATURES:
      values[feature.name] = list(getattr(self, feature.name))
    return {name: values[name] for name in features.RANK_INPUT_NAMES}


@dataclasses.dataclass(frozen=True)
class ExampleRequest:
  """One impression for `serving_default`: a tf.Example without a label.

  `hist_behavior_types` (indices into features.BEHAVIOR_TYPES) is optional,
  as in training data without types. Constructing it validates it.
  """

  user_id: int
  item_id: int
  category_id: int
  timestamp: int
  hist_item_ids: Sequence[int]
  hist_category_ids: Sequence[int]
  hist_timestamps: Sequence[int]
  hist_behavior_types: Optional[Sequence[int]] = None
  max_seq_len: int = features.DEFAULT_MAX_SEQ_LEN

  def __post_init__(self):
    _check_max_seq_len(self.max_seq_len)
    for name in ("user_id", "item_id", "category_id", "timestamp"):
      object.__setattr__(self, name, _int_value(name, getattr(self, name)))
    for name in HISTORY_KEYS:
      object.__setattr__(self, name, _int_list(name, getattr(self, name)))
    _check_history(self.hist_item_ids, self.hist_category_ids,
                   self.hist_timestamps, self.timestamp, self.max_seq_len,
                   "example")
    if self.hist_behavior_types is not None:
      object.__setattr__(self, "hist_behavior_types", _behavior_types(
          self.hist_behavior_types, len(self.hist_item_ids), "example"))

  def feature_values(self) -> dict[str, list[int]]:
    """Feature name -> int64 values, as in the training tf.Examples."""
    values = {
        features.USER_ID.name: [self.user_id],
        features.ITEM_ID.name: [self.item_id],
        features.CATEGORY_ID.name: [self.category_id],
        features.TIMESTAMP.name: [self.timestamp],
        features.HIST_ITEM_IDS.name: list(self.hist_item_ids),
        features.HIST_CATEGORY_IDS.name: list(self.hist_category_ids),
        features.HIST_TIMESTAMPS.name: list(self.hist_timestamps),
    }
    if self.hist_behavior_types is not None:
      values[features.HIST_BEHAVIOR_TYPES.name] = list(
          self.hist_behavior_types)
    return values

  def serialize(self) -> bytes:
    """The serialized tf.train.Example."""
    # pylint: disable-next=g-import-not-at-top
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example()
    for name, values in self.feature_values().items():
      example.features.feature[name].int64_list.value.extend(values)
    # Deterministic: map order fixed, so equal examples give equal bytes.
    return example.SerializeToString(deterministic=True)


def examples_for_candidates(rank: RankRequest,
                            user_id: int) -> list[ExampleRequest]:
  """The serving_default equivalent of a rank request: one example each."""
  return [
      ExampleRequest(
          user_id=user_id, item_id=item, category_id=category,
          timestamp=rank.request_timestamp,
          hist_item_ids=rank.hist_item_ids,
          hist_category_ids=rank.hist_category_ids,
          hist_timestamps=rank.hist_timestamps,
          hist_behavior_types=rank.hist_behavior_types,
          max_seq_len=rank.max_seq_len)
      for item, category in zip(rank.item_ids, rank.category_ids)
  ]


def history_from_rows(rows: Iterable[Union[str, bytes]], user_id: int,
                      request_timestamp: int,
                      max_seq_len: int = features.DEFAULT_MAX_SEQ_LEN,
                      source: str = "row",
                      bounds: Optional[raw_logs.TimestampBounds] = None,
                      rejected: Optional[list] = None,
                      ) -> tuple[list[int], ...]:
  """The point-in-time history of `user_id` from Taobao-format log lines.

  Ingestion's rule (`preprocessing.history`): rows parsed and validated as
  ingestion does, the user's behaviours strictly before `request_timestamp`,
  same-second behaviours ordered by (item, category, type), the most recent
  `max_seq_len`, oldest first.

  Args:
    rows: raw lines `user_id,item_id,category_id,behavior_type,timestamp`,
      str or bytes (bytes that are not UTF-8 are a bad_encoding row).
    user_id: whose history.
    request_timestamp: Unix seconds of the request, within `bounds`.
    max_seq_len: how many of the most recent behaviours to keep.
    source: how to name a row in errors ("<source> <row number>").
    bounds: valid timestamps, as ingestion's; default up to one day after now.
    rejected: None: a row that ingestion would reject raises LogError naming
      it and the reason. A list: such rows are skipped, as ingestion skips
      them, and appended to it as raw_logs.Reject (source "<source> <n>").

  Returns:
    (item_ids, category_ids, timestamps, behavior_types) lists.
  """
  return _history_from_located_rows(
      ((f"{source} {n}", row) for n, row in enumerate(rows, start=1)),
      user_id, request_timestamp, max_seq_len, bounds, rejected)


def history_from_log(pattern: str, user_id: int, request_timestamp: int,
                     max_seq_len: int = features.DEFAULT_MAX_SEQ_LEN,
                     bounds: Optional[raw_logs.TimestampBounds] = None,
                     rejected: Optional[list] = None) -> tuple[list[int], ...]:
  """`history_from_rows` over the lines of the files matching `pattern`
  (read by `read_log_lines`; rows are named "path:line")."""
  return _history_from_located_rows(
      read_log_lines(pattern), user_id, request_timestamp, max_seq_len,
      bounds, rejected)


def _history_from_located_rows(located_rows, user_id, request_timestamp,
                               max_seq_len, bounds=None, rejected=None):
  _check_max_seq_len(max_seq_len)
  user_id = _int_value("user_id", user_id)
  request_timestamp = _int_value("request_timestamp", request_timestamp)
  bounds = raw_logs.TimestampBounds.up_to_now() if bounds is None else bounds
  if not bounds.min_timestamp <= request_timestamp <= bounds.max_timestamp:
    # Ingestion rejects an impression at such a time (bad_timestamp).
    raise RequestError(
        f"request_timestamp={request_timestamp} outside [{bounds.min_timestamp}"
        f", {bounds.max_timestamp}] (Unix seconds)")

  def behaviors():
    for where, row in located_rows:
      if not isinstance(row, (str, bytes)):
        raise RequestError(
            f"{where}: a row must be a log line (str or bytes), got "
            f"{type(row).__name__}")
      result = history_rule.parse_behavior_line(row, where, bounds)
      if isinstance(result, raw_logs.Reject):
        if rejected is None:
          raise LogError(f"{where}: {result.reason}: {result.detail}")
        rejected.append(result)
      else:
        yield result

  rows = history_rule.user_history(behaviors(), user_id, request_timestamp,
                                   max_seq_len)
  return tuple(rows[:, column].tolist() for column in (
      history_rule.ITEM, history_rule.CATEGORY, history_rule.TS,
      history_rule.TYPE))


def request_inputs(request) -> dict[str, Any]:
  """A PredictRequest's input tensors as numpy arrays (for checks and tests)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  return {name: tf.make_ndarray(proto) for name, proto in
          request.inputs.items()}


def _tensor_proto(values, dtype_name: str, scalar: bool = False):
  """A TensorProto without importing tf.make_tensor_proto's numpy path."""
  # pylint: disable=g-import-not-at-top
  from tensorflow.core.framework import tensor_pb2
  from tensorflow.core.framework import tensor_shape_pb2
  from tensorflow.core.framework import types_pb2
  # pylint: enable=g-import-not-at-top

  proto = tensor_pb2.TensorProto(dtype=getattr(types_pb2, dtype_name))
  if scalar:
    values = [values]
  else:
    proto.tensor_shape.CopyFrom(tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=len(values))]))
  if dtype_name == "DT_INT64":
    proto.int64_val.extend(values)
  else:
    proto.string_val.extend(values)
  return proto


def _model_spec(request, model_name, signature_name, version, version_label):
  if version is not None and version_label is not None:
    raise RequestError("give a model version or a version label, not both")
  request.model_spec.name = model_name
  request.model_spec.signature_name = signature_name
  if version is not None:
    request.model_spec.version.value = _int_value("version", version)
  if version_label is not None:
    request.model_spec.version_label = version_label


def rank_predict_request(rank: RankRequest,
                         model_name: str = DEFAULT_MODEL_NAME,
                         version: Optional[int] = None,
                         version_label: Optional[str] = None):
  """A gRPC PredictRequest for the `rank` signature."""
  from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top

  request = predict_pb2.PredictRequest()
  _model_spec(request, model_name, features.RANK_SIGNATURE, version,
              version_label)
  for name, values in rank.inputs().items():
    request.inputs[name].CopyFrom(_tensor_proto(
        values, "DT_INT64",
        scalar=name == features.RANK_REQUEST_TIMESTAMP_KEY))
  return request


def examples_predict_request(examples: Sequence[ExampleRequest],
                             model_name: str = DEFAULT_MODEL_NAME,
                             version: Optional[int] = None,
                             version_label: Optional[str] = None):
  """A gRPC PredictRequest for `serving_default` (a batch of tf.Examples)."""
  from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top

  if not examples:
    raise RequestError("serving_default request: no examples")
  request = predict_pb2.PredictRequest()
  _model_spec(request, model_name, features.SERVING_DEFAULT_SIGNATURE,
              version, version_label)
  request.inputs[features.SERVING_EXAMPLES_KEY].CopyFrom(
      _tensor_proto([e.serialize() for e in examples], "DT_STRING"))
  return request


def rank_rest_body(rank: RankRequest) -> dict[str, Any]:
  """REST body in the columnar format: {"signature_name", "inputs"}."""
  return {"signature_name": features.RANK_SIGNATURE, "inputs": rank.inputs()}


def examples_rest_body(examples: Sequence[ExampleRequest]) -> dict[str, Any]:
  """REST body in the row format, binary strings as {"b64": ...}."""
  if not examples:
    raise RequestError("serving_default request: no examples")
  return {
      "signature_name": features.SERVING_DEFAULT_SIGNATURE,
      "instances": [
          {features.SERVING_EXAMPLES_KEY: {
              "b64": base64.b64encode(e.serialize()).decode("ascii")}}
          for e in examples
      ],
  }


def rest_url(server: str, model_name: str = DEFAULT_MODEL_NAME,
             version: Optional[int] = None,
             version_label: Optional[str] = None) -> str:
  """http://HOST:PORT/v1/models/NAME[/versions/V | /labels/L]:predict."""
  if version is not None and version_label is not None:
    raise RequestError("give a model version or a version label, not both")
  url = f"http://{server}/v1/models/{model_name}"
  if version is not None:
    url += f"/versions/{_int_value('version', version)}"
  elif version_label is not None:
    url += f"/labels/{version_label}"
  return url + ":predict"


def send_grpc(request, server: str, timeout_s: float = 10.0) -> list[float]:
  """Sends a PredictRequest to HOST:PORT (gRPC); returns the probabilities."""
  # pylint: disable=g-import-not-at-top
  import grpc
  from tensorflow_serving.apis import prediction_service_pb2_grpc
  # pylint: enable=g-import-not-at-top

  with grpc.insecure_channel(server) as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    try:
      response = stub.Predict(request, timeout=timeout_s)
    except grpc.RpcError as error:
      raise ServerError(
          f"gRPC Predict to {server} failed: {error.code().name}: "
          f"{error.details()}") from None
  output = response.outputs.get(features.PROBABILITIES_KEY)
  if output is None:
    raise ServerError(
        f"response has no {features.PROBABILITIES_KEY!r} output; has "
        f"{sorted(response.outputs)}")
  return list(output.float_val)


def send_rest(body: dict[str, Any], url: str,
              timeout_s: float = 10.0) -> list[float]:
  """POSTs a REST body; returns the probabilities."""
  # pylint: disable=g-import-not-at-top
  import urllib.error
  import urllib.request
  # pylint: enable=g-import-not-at-top

  request = urllib.request.Request(
      url, data=json.dumps(body).encode("utf-8"),
      headers={"Content-Type": "application/json"}, method="POST")
  try:
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
      answer = json.loads(response.read().decode("utf-8"))
  except urllib.error.HTTPError as error:
    raise ServerError(
        f"POST {url} failed: HTTP {error.code}: "
        f"{error.read().decode('utf-8', 'replace')}") from None
  except (urllib.error.URLError, OSError) as error:
    raise ServerError(f"POST {url} failed: {error}") from None
  return probabilities_from_rest_answer(answer)


def probabilities_from_rest_answer(answer: dict[str, Any]) -> list[float]:
  """Probabilities from a TF Serving REST answer.

  Columnar requests are answered {"outputs": values or {name: values}}, row
  requests {"predictions": [value or {name: value}, ...]}; a value may be a
  nested list ([B, 1] outputs).
  """
  def flatten(value):
    if isinstance(value, dict):
      value = value[features.PROBABILITIES_KEY]
    if isinstance(value, list):
      return [v for item in value for v in flatten(item)]
    return [float(value)]

  if "error" in answer:
    raise ServerError(f"server answered an error: {answer['error']}")
  for key in ("outputs", "predictions"):
    if key in answer:
      try:
        return flatten(answer[key])
      except (KeyError, TypeError, ValueError):
        break
  raise ServerError(
      f"answer has no {features.PROBABILITIES_KEY}: {str(answer)[:200]}")


def read_log_lines(pattern: str):
  """(path:line, line bytes) of every line of the files matching `pattern`,
  split as ingestion splits them (raw_logs.iter_lines); .gz is decompressed.

  Raises LogError for no match or a file that cannot be read to its end
  (a truncated .gz), naming the file.
  """
  paths = sorted(glob.glob(pattern))
  if not paths:
    raise LogError(f"no behaviour log matches {pattern!r}")
  for path in paths:
    opener = gzip.open if path.endswith(".gz") else open
    try:
      with opener(path, "rb") as f:
        for number, line in enumerate(raw_logs.iter_lines(f), start=1):
          yield f"{path}:{number}", line
    except (OSError, EOFError, zlib.error) as error:
      raise LogError(f"{path}: cannot read it to its end: {error}") from None


def _parse_candidates(text: str) -> tuple[list[int], list[int]]:
  items, categories = [], []
  for i, pair in enumerate(p for p in text.split(",") if p.strip()):
    parts = pair.split(":")
    try:
      item, category = (int(v) for v in parts)
    except ValueError:
      raise RequestError(
          f"candidate {i} {pair!r} must be ITEM_ID:CATEGORY_ID (integers)"
      ) from None
    items.append(item)
    categories.append(category)
  return items, categories


def _define_flags():
  from absl import flags  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string("behavior_log", None,
                      "Glob of Taobao-format behaviour CSVs (may be .gz).")
  flags.mark_flag_as_required("behavior_log")
  flags.DEFINE_integer("user_id", None, "The user to rank for.")
  flags.mark_flag_as_required("user_id")
  flags.DEFINE_string("candidates", None,
                      "Comma-separated ITEM_ID:CATEGORY_ID pairs.")
  flags.mark_flag_as_required("candidates")
  flags.DEFINE_integer("request_timestamp", None,
                       "Unix seconds of the request; the history is what "
                       "came strictly before it.")
  flags.mark_flag_as_required("request_timestamp")
  flags.DEFINE_enum("signature", features.RANK_SIGNATURE,
                    [features.RANK_SIGNATURE,
                     features.SERVING_DEFAULT_SIGNATURE],
                    "Which signature to call.")
  flags.DEFINE_integer("max_seq_len", features.DEFAULT_MAX_SEQ_LEN,
                       "The model's max_seq_len: the most recent behaviours "
                       "kept.")
  flags.DEFINE_boolean("skip_rejected_rows", False,
                       "Skip log rows that ingestion rejects (as ingestion "
                       "does), listing each on stderr; default: stop at the "
                       "first with its file, line and reason.")
  flags.DEFINE_string("server", None,
                      "HOST:PORT to send to (8500 gRPC, 8501 REST); unset: "
                      "print the request.")
  flags.DEFINE_enum("protocol", "grpc", ["grpc", "rest"], "How to send.")
  flags.DEFINE_string("model_name", DEFAULT_MODEL_NAME, "Model name.")
  flags.DEFINE_integer("model_version", None, "Pin a version.")
  flags.DEFINE_string("model_version_label", None,
                      "Pin a version label (e.g. stable, canary).")
  flags.DEFINE_float("timeout_s", 10.0, "Request timeout in seconds.")


def main(argv):
  # pylint: disable=g-import-not-at-top
  from absl import app
  from absl import flags
  # pylint: enable=g-import-not-at-top

  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  try:
    item_ids, category_ids = _parse_candidates(FLAGS.candidates)
    rejected = [] if FLAGS.skip_rejected_rows else None
    hist_items, hist_categories, hist_times, hist_types = history_from_log(
        FLAGS.behavior_log, FLAGS.user_id, FLAGS.request_timestamp,
        FLAGS.max_seq_len, rejected=rejected)
    for reject in rejected or ():
      print(f"skipped {reject.source}: {reject.reason}: {reject.detail}",
            file=sys.stderr)
    if rejected:
      print(f"skipped {len(rejected)} rows that ingestion rejects",
            file=sys.stderr)
    rank = RankRequest(hist_items, hist_categories, hist_times, item_ids,
                       category_ids, FLAGS.request_timestamp,
                       FLAGS.max_seq_len, hist_behavior_types=hist_types)
    pin = dict(version=FLAGS.model_version,
               version_label=FLAGS.model_version_label)
    if FLAGS.signature == features.RANK_SIGNATURE:
      body = rank_rest_body(rank)
      make_grpc = lambda: rank_predict_request(rank, FLAGS.model_name, **pin)
    else:
      examples = examples_for_candidates(rank, FLAGS.user_id)
      body = examples_rest_body(examples)
      make_grpc = lambda: examples_predict_request(
          examples, FLAGS.model_name, **pin)
    if FLAGS.server is None:
      print(json.dumps(body))
      return
    if FLAGS.protocol == "rest":
      probabilities = send_rest(
          body, rest_url(FLAGS.server, FLAGS.model_name, **pin),
          FLAGS.timeout_s)
    else:
      probabilities = send_grpc(make_grpc(), FLAGS.server, FLAGS.timeout_s)
  except LogError as error:
    raise SystemExit(f"bad behaviour log: {error}") from None
  except RequestError as error:
    raise app.UsageError(f"bad request: {error}") from None
  except ServerError as error:
    raise SystemExit(f"server error: {error}") from None
  print(json.dumps({"item_ids": item_ids,
                    features.PROBABILITIES_KEY: probabilities}))


def _parse_flags(argv):
  """absl's parser, but --help exits 0 (absl's exits 1)."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  try:
    return flags.FLAGS(argv)
  except SystemExit as done:
    if done.code == 1 and any(
        a in ("--help", "-h", "-?", "--helpfull", "--helpshort")
        for a in argv[1:]):
      sys.exit(0)
    raise


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top

  _define_flags()
  app.run(main, flags_parser=_parse_flags)
