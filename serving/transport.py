"""The wire: requests as TF Serving reads them, sent over gRPC or REST.

The gRPC PredictRequest (tensorflow-serving-api) and the REST JSON body (TF
Serving's documented `inputs` columnar and `instances` row formats) carry the
same tensors; `serialize_example` gives the tf.Example bytes of an
ExampleRequest. Nothing is sent unless a server is given.

TensorFlow's protos are imported inside the functions that build them: the
`tensorflow` package loads all of TensorFlow (seconds) on the first import of
any of its modules, which a REST body of a rank request, `--help` and
`import serving.client` do not need.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Optional, Sequence
import urllib.error
import urllib.request

import grpc

from preprocessing import features
from serving import requests

DEFAULT_MODEL_NAME = "eta"


class ServerError(RuntimeError):
  """The server could not be reached or answered with an error."""


def serialize_example(example: requests.ExampleRequest) -> bytes:
  """The serialized tf.train.Example of `example`."""
  # Lazy (module docstring): TensorFlow's protos.
  # pylint: disable-next=g-import-not-at-top
  from tensorflow.core.example import example_pb2

  proto = example_pb2.Example()
  for name, values in example.feature_values().items():
    proto.features.feature[name].int64_list.value.extend(values)
  # Deterministic: map order fixed, so equal examples give equal bytes.
  return proto.SerializeToString(deterministic=True)


def request_inputs(request) -> dict[str, Any]:
  """A PredictRequest's input tensors as numpy arrays (for checks and tests)."""
  # Lazy (module docstring): TensorFlow.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  return {name: tf.make_ndarray(proto) for name, proto in
          request.inputs.items()}


def _tensor_proto(values, dtype_name: str, scalar: bool = False):
  """A TensorProto without importing tf.make_tensor_proto's numpy path."""
  # Lazy (module docstring): TensorFlow's protos.
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


def _check_one_pin(version, version_label):
  if version is not None and version_label is not None:
    raise requests.RequestError(
        "give a model version or a version label, not both")


def _model_spec(request, model_name, signature_name, version, version_label):
  _check_one_pin(version, version_label)
  request.model_spec.name = model_name
  request.model_spec.signature_name = signature_name
  if version is not None:
    request.model_spec.version.value = requests.int64_value("version", version)
  if version_label is not None:
    request.model_spec.version_label = version_label


def rank_predict_request(rank: requests.RankRequest,
                         model_name: str = DEFAULT_MODEL_NAME,
                         version: Optional[int] = None,
                         version_label: Optional[str] = None):
  """A gRPC PredictRequest for the `rank` signature."""
  # Lazy (module docstring): TF Serving's protos import TensorFlow's.
  from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top

  request = predict_pb2.PredictRequest()
  _model_spec(request, model_name, features.RANK_SIGNATURE, version,
              version_label)
  for name, values in rank.inputs().items():
    request.inputs[name].CopyFrom(_tensor_proto(
        values, "DT_INT64",
        scalar=name == features.RANK_REQUEST_TIMESTAMP_KEY))
  return request


def examples_predict_request(examples: Sequence[requests.ExampleRequest],
                             model_name: str = DEFAULT_MODEL_NAME,
                             version: Optional[int] = None,
                             version_label: Optional[str] = None):
  """A gRPC PredictRequest for `serving_default` (a batch of tf.Examples)."""
  # Lazy (module docstring): TF Serving's protos import TensorFlow's.
  from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top

  if not examples:
    raise requests.RequestError("serving_default request: no examples")
  request = predict_pb2.PredictRequest()
  _model_spec(request, model_name, features.SERVING_DEFAULT_SIGNATURE,
              version, version_label)
  request.inputs[features.SERVING_EXAMPLES_KEY].CopyFrom(
      _tensor_proto([serialize_example(e) for e in examples], "DT_STRING"))
  return request


def rank_rest_body(rank: requests.RankRequest) -> dict[str, Any]:
  """REST body in the columnar format: {"signature_name", "inputs"}."""
  return {"signature_name": features.RANK_SIGNATURE, "inputs": rank.inputs()}


def examples_rest_body(
    examples: Sequence[requests.ExampleRequest]) -> dict[str, Any]:
  """REST body in the row format, binary strings as {"b64": ...}."""
  if not examples:
    raise requests.RequestError("serving_default request: no examples")
  return {
      "signature_name": features.SERVING_DEFAULT_SIGNATURE,
      "instances": [
          {features.SERVING_EXAMPLES_KEY: {
              "b64": base64.b64encode(serialize_example(e)).decode("ascii")}}
          for e in examples
      ],
  }


def rest_url(server: str, model_name: str = DEFAULT_MODEL_NAME,
             version: Optional[int] = None,
             version_label: Optional[str] = None) -> str:
  """http://HOST:PORT/v1/models/NAME[/versions/V | /labels/L]:predict."""
  _check_one_pin(version, version_label)
  url = f"http://{server}/v1/models/{model_name}"
  if version is not None:
    url += f"/versions/{requests.int64_value('version', version)}"
  elif version_label is not None:
    url += f"/labels/{version_label}"
  return url + ":predict"


def send_grpc(request, server: str, timeout_s: float = 10.0) -> list[float]:
  """Sends a PredictRequest to HOST:PORT (gRPC); returns the probabilities."""
  # Lazy (module docstring): TF Serving's protos import TensorFlow's.
  # pylint: disable-next=g-import-not-at-top
  from tensorflow_serving.apis import prediction_service_pb2_grpc

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
