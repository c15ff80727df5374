"""Typed model/training configs: defaults, unknown keys and bad values refused."""

import pytest

from preprocessing import features
from trainer import config


def test_defaults_follow_the_registry():
  model_config = config.ModelConfig()
  assert model_config.max_seq_len == features.DEFAULT_MAX_SEQ_LEN
  assert model_config.short_seq_len == features.SHORT_SEQ_LEN
  assert model_config.model == "eta"
  assert (model_config.sdim_num_bits, model_config.sdim_tau) == (48, 3)


def test_round_trip_through_dict():
  model_config = config.ModelConfig(model="sdim", mlp_units=[32, 16], dropout=0.1)
  assert model_config.mlp_units == (32, 16)  # lists (JSON) become tuples
  assert config.ModelConfig.from_dict(model_config.to_dict()) == model_config
  train_config = config.TrainConfig(batch_size=8, eval_steps=3)
  assert config.TrainConfig.from_dict(train_config.to_dict()) == train_config
  assert model_config.replace(top_k=8).top_k == 8


def test_unknown_keys_are_refused():
  with pytest.raises(config.ConfigError, match="topk"):
    config.ModelConfig.from_dict({"topk": 3})
  with pytest.raises(config.ConfigError, match="lr"):
    config.TrainConfig.from_dict({"lr": 0.1})
  with pytest.raises(config.ConfigError, match="nonsense"):
    config.split_flat_config({"model": "din", "nonsense": 1})


def test_split_flat_config_routes_keys():
  model_config, train_config = config.split_flat_config(
      {"model": "din", "max_seq_len": 100, "batch_size": 16, "mlp_units": [8]}
  )
  assert (model_config.model, model_config.max_seq_len, model_config.mlp_units) == (
      "din", 100, (8,)
  )
  assert train_config.batch_size == 16
  assert config.split_flat_config(None) == (config.ModelConfig(), config.TrainConfig())


@pytest.mark.parametrize(
    "values, message",
    [
        ({"model": "transformer"}, "unknown model variant"),
        ({"top_k": 2000}, "top_k"),
        ({"max_seq_len": 40}, "short_seq_len"),
        ({"max_seq_len": 0}, "max_seq_len"),
        ({"max_seq_len": features.MAX_SUPPORTED_SEQ_LEN + 1}, "max_seq_len"),
        ({"num_bits": 24}, "num_bits"),
        ({"sdim_tau": 5}, "multiple"),
        ({"dropout": 1.0}, "dropout"),
        ({"embedding_dim": 8.0}, "embedding_dim"),
        ({"num_heads": True}, "num_heads"),
        ({"mlp_units": "64"}, "mlp_units"),
        ({"din_hidden_units": ()}, "din_hidden_units"),
        ({"jit_compile": 1}, "jit_compile"),
        ({"seed": -1}, "seed"),
        ({"retrieval_embedding": "query"}, "retrieval_embedding must be one of"),
        ({"use_item_ids": False, "retrieval_embedding": "item"}, "needs retrieval_embedding"),
        ({"use_item_ids": "no"}, "use_item_ids must be a bool"),
        ({"long_statistics": 0}, "long_statistics must be a bool"),
        ({"linear_shortcut": None}, "linear_shortcut must be a bool"),
        ({"prefer_recent": 1}, "prefer_recent must be a bool"),
    ],
)
def test_bad_model_values_are_refused(values, message):
  with pytest.raises(config.ConfigError, match=message):
    config.ModelConfig.from_dict(values)


def test_top_k_is_only_bounded_for_retrieval_variants():
  config.ModelConfig(model="din", max_seq_len=50, top_k=64)
  with pytest.raises(config.ConfigError, match="top_k"):
    config.ModelConfig(model="eta", max_seq_len=50, top_k=64)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"train_steps": 0}, "train_steps"),
        ({"eval_steps": 0}, "eval_steps"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": "fast"}, "learning_rate"),
        ({"steps_per_epoch": 0}, "steps_per_epoch"),
        ({"validation_days": -1}, "validation_days"),
        ({"validation_days": 1.5}, "validation_days"),
        ({"early_stopping_patience": 0}, "early_stopping_patience"),
        ({"early_stopping_metric": "gauc"}, "early_stopping_metric"),
        ({"ema_momentum": 1.0}, "ema_momentum"),
        ({"ema_momentum": -0.1}, "ema_momentum"),
    ],
)
def test_bad_train_values_are_refused(values, message):
  with pytest.raises(config.ConfigError, match=message):
    config.TrainConfig.from_dict(values)


def test_early_stopping_is_on_by_default_and_zero_days_disable_it():
  default = config.TrainConfig()
  assert (default.validation_days, default.early_stopping_patience,
          default.early_stopping_metric) == (1, 2, "logloss")
  assert config.TrainConfig(validation_days=0).validation_days == 0
  _, train_config = config.split_flat_config(
      {"validation_days": 2, "early_stopping_metric": "auc"})
  assert (train_config.validation_days, train_config.early_stopping_metric) == (2, "auc")
