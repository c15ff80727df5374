"""The exported SavedModel: loads with TensorFlow alone and predicts the same."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import tensorflow as tf

from preprocessing import features
from trainer import config
from trainer import export
from trainer import input as input_lib
from trainer import model as model_lib
from trainer import toy_data
from trainer import training

L = 64

# Runs in a fresh interpreter that can import nothing of ours.
LOAD_AND_PREDICT = """
import json, sys
import numpy as np
import tensorflow as tf
assert 'trainer' not in sys.modules and 'preprocessing' not in sys.modules
export_dir, examples_path, out_path = sys.argv[1:]
serialized = [r.numpy() for r in tf.data.TFRecordDataset(examples_path, compression_type='GZIP')]
loaded = tf.saved_model.load(export_dir)
serve = loaded.signatures['serving_default']
out = serve(examples=tf.constant(serialized))
np.save(out_path, out['probabilities'].numpy())
print(json.dumps({'inputs': sorted(serve.structured_input_signature[1]),
                  'outputs': sorted(out)}))
"""


def test_exported_model_matches_in_process_predictions(tmp_path):
  examples = toy_data.make_examples(toy_data.ToyDataConfig(num_examples=64, max_history=90))
  examples += toy_data.make_examples(
      toy_data.ToyDataConfig(num_examples=8, max_history=5, with_behavior_types=False, seed=1)
  )
  for example in examples:
    example.pop("label")  # serving requests carry no label
  examples_path = str(tmp_path / "requests.tfrecord.gz")
  toy_data.write_tfrecords(examples_path, examples)

  model = model_lib.build_model(
      config.ModelConfig(model="eta", max_seq_len=L, top_k=16, embedding_dim=16,
                         head_dim=8, mlp_units=(16,), jit_compile=True)
  )
  serialized = tf.constant([toy_data.serialize(e) for e in examples])

  @tf.function
  def predict(serialized):
    return tf.sigmoid(model(input_lib.parse_and_transform(serialized, L, include_label=False)))

  want = predict(serialized).numpy()  # traced with XLA
  export_dir = str(tmp_path / "saved_model")
  export.export_standalone(model, export_dir, L)
  graph = (pathlib.Path(export_dir) / "saved_model.pb").read_bytes()
  assert b"_XlaMustCompile" not in graph  # TF Serving runs without XLA JIT

  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_USE_LEGACY_KERAS")}
  out_path = str(tmp_path / "probabilities.npy")
  result = subprocess.run(
      [sys.executable, "-c", LOAD_AND_PREDICT, export_dir, examples_path, out_path],
      capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path),
  )
  assert result.returncode == 0, result.stderr[-3000:]
  signature = json.loads(result.stdout.strip().splitlines()[-1])
  assert signature == {"inputs": ["examples"], "outputs": ["probabilities"]}
  got = np.load(out_path)
  assert got.shape == (len(examples),)
  np.testing.assert_allclose(got, want, atol=1e-5)
  assert want.std() > 0  # distinct inputs, distinct predictions


def test_export_leaves_the_optimizer_state_out(tmp_path):
  """The SavedModel holds the model's weights only (no Adam moments or weight
  averages), and the model keeps training with its optimizer afterwards."""
  model_config = config.ModelConfig(model="din", max_seq_len=L, embedding_dim=8,
                                    mlp_units=(8,), din_hidden_units=(8,), jit_compile=False)
  model = model_lib.build_model(model_config)
  train_config = config.TrainConfig(batch_size=16, train_steps=2, steps_per_epoch=2,
                                    ema_momentum=0.9)
  training.compile_model(model, train_config)
  examples = toy_data.make_examples(toy_data.ToyDataConfig(num_examples=32, max_history=70))
  inputs = input_lib.parse_and_transform(tf.constant([toy_data.serialize(e) for e in examples]), L)
  labels = inputs.pop(features.LABEL_KEY)
  dataset = tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(16).repeat()
  training.fit(model, dataset, train_config)
  optimizer = model.optimizer
  assert len(optimizer.variables) > 2 * len(model.trainable_variables)  # moments, averages

  export_dir = str(tmp_path / "saved_model")
  export.export_standalone(model, export_dir, L)
  saved = tf.train.load_checkpoint(os.path.join(export_dir, "variables", "variables"))
  names = saved.get_variable_to_shape_map()
  assert not [n for n in names if n.startswith("optimizer")]
  weights = {n: shape for n, shape in names.items() if n.startswith("variables/")}
  assert sum(int(np.prod(s)) for s in weights.values()) == sum(
      int(np.prod(w.shape)) for w in model.weights)
  # Besides the weights: the object graph and the AUC metric's counters only.
  assert {n.split("/")[0] for n in names} == {"_CHECKPOINTABLE_OBJECT_GRAPH", "variables",
                                             "keras_api"}

  assert model.optimizer is optimizer
  training.fit(model, dataset, train_config)  # still trains after the export
