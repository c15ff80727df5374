"""Small models for the model and signature tests: one way to build a config
from a test file's sizes and one way to give a built model random weights."""

import numpy as np

from trainer import config
from trainer import model as model_lib


def small_config(sizes: dict, variant: str, **overrides) -> config.ModelConfig:
  """A ModelConfig of `variant` at a test file's small `sizes`, overridden."""
  return config.ModelConfig(**{**sizes, "model": variant, **overrides})


def randomized_model(model_config: config.ModelConfig, seed: int = 0):
  """A built model with large random weights, so scores differ visibly."""
  model = model_lib.build_model(model_config)
  rng = np.random.default_rng(seed)
  for weight in model.trainable_weights:
    weight.assign(rng.normal(0.0, 0.4, weight.shape).astype(np.float32))
  return model
