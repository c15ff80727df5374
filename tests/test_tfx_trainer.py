"""run_fn with a real FnArgs on Transform output made by tft_beam."""

import json
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from preprocessing import features
from trainer import config
from trainer import toy_data
from trainer import tfx_trainer
from trainer import training

L = 64


def make_fn_args(**values):
  from tfx.components.trainer.fn_args_utils import FnArgs

  return FnArgs(**values)


def test_custom_config_is_typed_and_steps_come_from_train_args():
  model_config, train_config = tfx_trainer.trainer_configs(
      {"model": "din", "max_seq_len": 100, "batch_size": 16, "seed": 3}, 7, 0
  )
  assert (model_config.model, model_config.max_seq_len, model_config.seed) == ("din", 100, 3)
  assert (train_config.train_steps, train_config.eval_steps, train_config.batch_size) == (7, None, 16)
  with pytest.raises(config.ConfigError, match="tau"):
    tfx_trainer.trainer_configs({"tau": 3}, 1, 1)
  with pytest.raises(config.ConfigError, match="TrainArgs"):
    tfx_trainer.trainer_configs({"train_steps": 3}, 1, 1)


def test_transformed_schema_must_fit_the_model():
  spec = {
      "item_id": tf.io.FixedLenFeature([], tf.int64),
      "category_id": tf.io.FixedLenFeature([], tf.int64),
      "hist_item_ids": tf.io.FixedLenFeature([32], tf.int64),
  }
  with pytest.raises(config.ConfigError, match="hist_item_ids.*64") as error:
    tfx_trainer.check_transformed_schema(spec, 64)
  assert "hist_length missing" in str(error.value)


def _raw_rows(examples):
  return [
      {k: (v if isinstance(v, list) else [v]) for k, v in example.items()}
      for example in examples
  ]


@pytest.fixture(scope="module")
def transformed_data(tmp_path_factory):
  """Raw toy examples -> tft_beam with the pipeline's preprocessing_fn -> files."""
  import apache_beam as beam  # pylint: disable=unused-import
  import tensorflow_transform as tft
  import tensorflow_transform.beam as tft_beam
  from tensorflow_transform.tf_metadata import metadata_io
  from tfx.types import standard_artifacts
  from tfx.types import artifact_utils
  from tfx.components.util import examples_utils
  from tfx.proto import example_gen_pb2

  from pipeline import schema_builder
  from preprocessing import preprocessing_fn as pfn

  root = tmp_path_factory.mktemp("tfx_trainer")
  examples = toy_data.make_examples(
      toy_data.ToyDataConfig(num_examples=320, num_users=24, max_history=L, seed=4)
  )
  splits = {"train": examples[:256], "eval": examples[256:]}
  metadata = tft.DatasetMetadata(schema_builder.build_schema(max_seq_len=L))
  custom = {"max_seq_len": L, "history_length_edges": [0, 1, 10, 100, 1000]}
  transform_dir = str(root / "transform_graph")
  with tft_beam.Context(temp_dir=str(root / "tmp")):
    (train_rows, transformed_metadata), transform_fn = (
        _raw_rows(splits["train"]), metadata
    ) | tft_beam.AnalyzeAndTransformDataset(lambda x: pfn.preprocessing_fn(x, custom))
    eval_rows, _ = (
        (_raw_rows(splits["eval"]), metadata), transform_fn
    ) | tft_beam.TransformDataset()
    _ = transform_fn | tft_beam.WriteTransformFn(transform_dir)
  # TFX's Transform component also writes the raw metadata beside the graph.
  metadata_io.write_metadata(
      metadata, os.path.join(transform_dir, tft.TFTransformOutput.RAW_METADATA_DIR))
  coder = tft.coders.ExampleProtoCoder(transformed_metadata.schema)
  examples_uri = root / "transformed_examples"
  for split, rows in (("train", train_rows), ("eval", eval_rows)):
    (examples_uri / f"Split-{split}").mkdir(parents=True)
    path = str(examples_uri / f"Split-{split}" / "data.tfrecord.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
      for row in rows:
        writer.write(coder.encode(row))
  artifact = standard_artifacts.Examples()
  artifact.uri = str(examples_uri)
  artifact.split_names = artifact_utils.encode_split_names(["train", "eval"])
  examples_utils.set_payload_format(artifact, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
  return {
      "root": root, "artifact": artifact, "transform_dir": transform_dir,
      "raw_eval": splits["eval"], "eval_rows": eval_rows, "raw_train": splits["train"],
  }


def run_trainer(data, name, base_model=None, **custom):
  from tfx.components.trainer.fn_args_utils import DataAccessor
  from tfx.components.util import tfxio_utils

  accessor = DataAccessor(
      tf_dataset_factory=tfxio_utils.get_tf_dataset_factory_from_artifact(
          [data["artifact"]], []),
      record_batch_factory=tfxio_utils.get_record_batch_factory_from_artifact(
          [data["artifact"]], []),
      data_view_decode_fn=None,
  )
  uri = data["artifact"].uri
  fn_args = make_fn_args(
      train_files=[os.path.join(uri, "Split-train", "*")],
      eval_files=[os.path.join(uri, "Split-eval", "*")],
      train_steps=custom.pop("train_steps", 16), eval_steps=2,
      transform_output=data["transform_dir"], transform_graph_path=data["transform_dir"],
      data_accessor=accessor,
      serving_model_dir=str(data["root"] / name / "serving"),
      model_run_dir=str(data["root"] / name / "run"),
      base_model=base_model,
      custom_config={
          "model": "eta", "max_seq_len": L, "batch_size": 32, "top_k": 16,
          "embedding_dim": 8, "head_dim": 8, "mlp_units": [16], "steps_per_epoch": 8,
          **custom,
      },
  )
  tfx_trainer.run_fn(fn_args)
  return fn_args


def serve(export_dir, raw_examples):
  loaded = tf.saved_model.load(export_dir)
  requests = []
  for example in raw_examples:
    request = dict(example)
    request.pop(features.LABEL_KEY)
    requests.append(toy_data.serialize(request))
  return loaded, loaded.signatures["serving_default"](
      examples=tf.constant(requests))["probabilities"].numpy()


@pytest.mark.e2e
def test_run_fn_trains_exports_and_warm_starts(transformed_data):
  first = run_trainer(transformed_data, "first", learning_rate=1e-2)
  assert list(pathlib.Path(first.model_run_dir).rglob("events.out.tfevents.*"))  # TensorBoard
  # Early stopping validated on the newest day of the TRAIN split, through
  # the timestamp Transform passes through.
  summary = json.loads((pathlib.Path(first.model_run_dir) / "metrics.json").read_text())
  validation = summary["validation"]
  days = sorted({e["timestamp"] // 86_400 for e in transformed_data["raw_train"]})
  assert len(days) >= 2
  assert validation["validation_examples"] == sum(
      e["timestamp"] // 86_400 == days[-1] for e in transformed_data["raw_train"])
  losses = [h["logloss"] for h in validation["history"]]
  assert validation["best_epoch"] == int(np.argmin(losses))
  assert summary["train_steps_total"] == 16
  # The same working dir with other settings: refused in one line.
  with pytest.raises(training.TrainingError, match="differs in learning_rate"):
    run_trainer(transformed_data, "first", learning_rate=1e-3)
  loaded, probabilities = serve(first.serving_model_dir, transformed_data["raw_eval"])
  assert probabilities.shape == (len(transformed_data["raw_eval"]),)
  assert np.all((probabilities > 0) & (probabilities < 1)) and probabilities.std() > 0

  # transform_features (for TFMA) equals what tft_beam wrote for the same rows.
  raw_requests = tf.constant(
      [toy_data.serialize(e) for e in transformed_data["raw_eval"]])
  transformed = loaded.signatures["transform_features"](examples=raw_requests)
  for name in ("hist_item_ids", "hist_time_gap_buckets", "item_id", "hist_length"):
    want = np.array([row[name] for row in transformed_data["eval_rows"]])
    np.testing.assert_array_equal(transformed[name].numpy().reshape(want.shape), want)

  # Warm start: loaded by name, then (almost) no learning -> same predictions;
  # a fresh model with the same seed would predict like the untrained init.
  second = run_trainer(transformed_data, "second", base_model=first.serving_model_dir,
                       learning_rate=1e-12, train_steps=2)
  _, warm = serve(second.serving_model_dir, transformed_data["raw_eval"])
  np.testing.assert_allclose(warm, probabilities, atol=1e-5)
  third = run_trainer(transformed_data, "third", learning_rate=1e-12, train_steps=2)
  _, cold = serve(third.serving_model_dir, transformed_data["raw_eval"])
  assert np.abs(cold - probabilities).max() > 1e-3
