"""The pinned stack is what is in effect: Keras 2, the expected versions, and
every library of the stack importing together in one process."""

import os
import pathlib
import subprocess
import sys

import pytest

from preprocessing import environment


def test_keras_2_is_in_effect():
  import tensorflow as tf

  assert tf.keras.Model.__module__.startswith("tf_keras."), tf.keras.Model.__module__
  import tf_keras

  assert environment.parse_version(tf_keras.__version__)[:2] == (2, 16)


def test_check_environment_passes_here():
  environment.check_environment()


def test_whole_stack_imports_together():
  """The import order that once pulled Keras 3 in: TFX first, TFRS last."""
  code = (
      "from tfx import v1 as tfx\n"
      "import tensorflow_transform, tensorflow_model_analysis, tensorflow_data_validation\n"
      "import tensorflow_io, apache_beam\n"
      "from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc\n"
      "import tensorflow_recommenders as tfrs\n"
      "import tensorflow as tf\n"
      "assert tf.keras.Model.__module__.startswith('tf_keras.'), tf.keras.Model.__module__\n"
      "assert isinstance(tfrs.tasks.Ranking(), tf.keras.layers.Layer)\n"
      "print('stack-ok')\n"
  )
  out = subprocess.run(
      [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert "stack-ok" in out.stdout


def test_missing_legacy_keras_variable_is_refused(monkeypatch):
  monkeypatch.delenv("TF_USE_LEGACY_KERAS", raising=False)
  with pytest.raises(environment.StackMismatchError, match="TF_USE_LEGACY_KERAS"):
    environment.check_environment(import_tensorflow=False)


def test_wrong_version_is_refused(monkeypatch):
  monkeypatch.setenv("TF_USE_LEGACY_KERAS", "1")
  with pytest.raises(environment.StackMismatchError, match="tensorflow 2.16"):
    environment.check_environment(
        expected={"tensorflow": (2, 17)}, import_tensorflow=False
    )
  with pytest.raises(environment.StackMismatchError, match="not installed"):
    environment.check_environment(
        expected={"no-such-distribution-xyz": (1,)}, import_tensorflow=False
    )


def test_keras_3_is_detected_in_a_fresh_process():
  """Without the variable, TF 2.16 gives Keras 3 and the check says so."""
  env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
  env["PYTHONPATH"] = str(pathlib.Path(__file__).resolve().parent.parent)
  code = (
      "import os\n"
      "import tensorflow as tf\n"
      "tf.keras.Model  # resolves tf.keras now, to Keras 3\n"
      "os.environ['TF_USE_LEGACY_KERAS'] = '1'  # too late: TF already chose\n"
      "from preprocessing import environment\n"
      "try:\n"
      "  environment.check_environment()\n"
      "except environment.StackMismatchError as e:\n"
      "  print('refused:', e)\n"
  )
  out = subprocess.run(
      [sys.executable, "-c", code], capture_output=True, text=True, env=env,
      timeout=300,
  )
  assert "refused:" in out.stdout and "Keras 3" in out.stdout, (out.stdout, out.stderr[-2000:])


@pytest.mark.parametrize(
    "text,expected",
    [("2.16.2", (2, 16, 2)), ("1.16.0", (1, 16, 0)), ("2.16.0rc1", (2, 16)), ("10.2", (10, 2))],
)
def test_parse_version(text, expected):
  assert environment.parse_version(text) == expected
  # Numeric, not string, comparison: 10 > 9.
  assert environment.parse_version("10.0") > environment.parse_version("9.9")
