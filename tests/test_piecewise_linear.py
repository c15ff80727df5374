"""PiecewiseLinearEncoding against a loop-per-element numpy reference."""

import numpy as np
import pytest
import tensorflow as tf

from preprocessing import features
from preprocessing import transforms
from trainer import config
from trainer import input as input_lib
from trainer import model as model_lib
from trainer import toy_data
from trainer.layers import history_statistics
from trainer.layers import piecewise_linear


def reference_encoding(values: np.ndarray, boundaries: np.ndarray) -> np.ndarray:
  """One value and one bin at a time, as the module docstring writes it."""
  rows, width = values.shape
  bins = boundaries.shape[1] - 1
  out = np.zeros((rows, width * (1 + bins)))
  out[:, :width] = values
  for r in range(rows):
    for f in range(width):
      for j in range(bins):
        low, high, x = boundaries[f, j], boundaries[f, j + 1], values[r, f]
        if high > low:
          e = min(max((x - low) / (high - low), 0.0), 1.0)
        else:
          e = 1.0 if x >= high else 0.0
        out[r, width + f * bins + j] = e
  return out


def statistics_like(rows: int, seed: int) -> np.ndarray:
  """Columns like the history statistics: log1p counts that are mostly 0
  (repeated quantiles), a [0, 1] share, a continuous column."""
  rng = np.random.default_rng(seed)
  counts = np.log1p(rng.poisson(0.4, rows) * rng.integers(0, 2, rows))
  share = rng.beta(0.5, 3.0, rows)
  return np.stack([counts, share, rng.normal(2.0, 3.0, rows)], axis=1).astype(np.float32)


def test_adapt_sets_the_quantiles_and_the_output_equals_the_reference():
  train = statistics_like(500, seed=0)
  layer = piecewise_linear.PiecewiseLinearEncoding(num_bins=6)
  layer.adapt(train)
  expected_boundaries = np.quantile(train.astype(np.float64), np.linspace(0, 1, 7), axis=0).T
  np.testing.assert_allclose(layer.boundaries.numpy(), expected_boundaries, rtol=1e-6)
  # The count column repeats its quantiles: empty bins become steps.
  assert np.any(np.diff(layer.boundaries.numpy()[0]) == 0)
  test = np.concatenate([statistics_like(40, seed=1), [[-1.0, 2.0, 100.0]]]).astype(np.float32)
  np.testing.assert_allclose(
      layer(test).numpy(), reference_encoding(test, layer.boundaries.numpy()), atol=1e-6
  )


def test_leading_dimensions_are_kept():
  layer = piecewise_linear.PiecewiseLinearEncoding(num_bins=3)
  values = statistics_like(12, seed=2).reshape(3, 4, 3)
  layer.adapt(values.reshape(12, 3))
  out = layer(values).numpy()
  assert out.shape == (3, 4, 12)
  np.testing.assert_allclose(out.reshape(12, 12), layer(values.reshape(12, 3)).numpy())


def test_unadapted_boundaries_are_the_unit_interval():
  layer = piecewise_linear.PiecewiseLinearEncoding(num_bins=4)
  out = layer(tf.constant([[0.3, 2.0]])).numpy()
  np.testing.assert_allclose(out, [[0.3, 2.0, 1.0, 0.2, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]],
                             atol=1e-6)


@pytest.mark.parametrize("num_bins, error", [(0, ValueError), (True, TypeError),
                                             (2.5, TypeError)])
def test_bad_num_bins_raise(num_bins, error):
  with pytest.raises(error, match="num_bins"):
    piecewise_linear.PiecewiseLinearEncoding(num_bins=num_bins)


def test_bad_adapt_inputs_raise():
  layer = piecewise_linear.PiecewiseLinearEncoding(num_bins=2)
  with pytest.raises(ValueError, match="non-empty"):
    layer.adapt(np.zeros((0, 3)))
  layer.adapt(np.zeros((4, 3)))
  with pytest.raises(ValueError, match="got 2 features, the layer has 3"):
    layer.adapt(np.zeros((4, 2)))
  with pytest.raises(ValueError, match="non-finite"):
    layer.adapt(np.array([[0.0, np.nan, 1.0]]))


def test_config_round_trip():
  layer = piecewise_linear.PiecewiseLinearEncoding(num_bins=5, name="encoding")
  config = layer.get_config()
  assert config["num_bins"] == 5
  clone = piecewise_linear.PiecewiseLinearEncoding.from_config(config)
  assert (clone.num_bins, clone.name) == (5, "encoding")


def test_savedmodel_round_trip_keeps_the_adapted_boundaries(tmp_path):
  train = statistics_like(300, seed=3)
  inputs = tf.keras.Input([3], name="statistics")
  layer = piecewise_linear.PiecewiseLinearEncoding(num_bins=4, name="encoding")
  model = tf.keras.Model(inputs, layer(inputs))
  layer.adapt(train)
  test = statistics_like(20, seed=4)
  expected = model(test).numpy()
  path = str(tmp_path / "encoding_model")
  model.save(path)
  reloaded = tf.keras.models.load_model(path)
  np.testing.assert_array_equal(reloaded(test).numpy(), expected)
  served = tf.saved_model.load(path).signatures["serving_default"](
      statistics=tf.constant(test))
  np.testing.assert_array_equal(list(served.values())[0].numpy(), expected)


def toy_batches(max_seq_len: int, examples: int = 48, batch: int = 16):
  raw = toy_data.make_examples(toy_data.ToyDataConfig(num_examples=examples, max_history=40))
  inputs = input_lib.parse_and_transform(
      tf.constant([toy_data.serialize(e) for e in raw]), max_seq_len)
  labels = inputs.pop(features.LABEL_KEY)
  return tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(batch)


def test_the_model_adapts_its_statistics_bins_from_the_examples_it_is_given():
  length = 32
  model = model_lib.build_model(config.ModelConfig(
      model="eta", max_seq_len=length, short_seq_len=8, top_k=4, embedding_dim=4,
      jit_compile=False,
      statistics_bins=4))
  dataset = toy_batches(length)
  assert model.adapt_statistics(lambda: dataset, max_examples=40) == 40
  # The reference: the raw statistics of the first 40 examples, by the
  # brute-force-tested history_statistics, and numpy's quantiles of them.
  raw = []
  for inputs, _ in dataset:
    mask = model_lib.valid_mask(inputs[transforms.HIST_LENGTH], length)
    slots = {name: inputs[name][:, tf.newaxis]
             for name in (features.ITEM_ID.name, features.CATEGORY_ID.name)}
    history = {name: inputs[name] for name in transforms.SEQUENCE_OUTPUTS}
    raw.append(history_statistics.history_statistics(
        slots, history, mask, model.model_config.short_seq_len)[:, 0].numpy())
  raw = np.concatenate(raw)[:40].astype(np.float64)
  np.testing.assert_allclose(
      model.long_branch.statistics_encoding.boundaries.numpy(),
      np.quantile(raw, np.linspace(0, 1, 5), axis=0).T, rtol=1e-6, atol=1e-7)
  # The head reads the encoded statistics: [raw, 4 bins] per statistic.
  assert model.long_branch.statistics_encoding.compute_output_shape(
      [None, raw.shape[1]])[-1] == 5 * raw.shape[1]


def test_models_without_the_encoding_adapt_nothing():
  length = 32
  for variant, bins in (("din", 4), ("eta", 0)):
    model = model_lib.build_model(config.ModelConfig(
        model=variant, max_seq_len=length, short_seq_len=8, top_k=4, embedding_dim=4,
        jit_compile=False,
        statistics_bins=bins))
    assert model.adapt_statistics(lambda: pytest.fail("built a dataset it does not read")) == 0
