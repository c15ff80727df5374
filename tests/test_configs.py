"""PipelineConfig: defaults, unknown keys refused, range checks, date spans,
the model settings checked by the trainer's configs, the schema bound."""

import dataclasses
import datetime
import os
import subprocess
import sys

import pytest

from pipeline import configs
from pipeline import schema_builder
from preprocessing import features
from trainer import config as trainer_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PATHS = dict(pipeline_root="/tmp/root", data_root="/tmp/data", serving_model_dir="/tmp/serving")


def test_defaults_and_metadata_path():
  config = configs.PipelineConfig(**PATHS)
  assert config.max_seq_len == features.DEFAULT_MAX_SEQ_LEN
  assert config.resolved_metadata_path == "/tmp/root/metadata.sqlite"
  assert config.beam_pipeline_args == (
      "--direct_running_mode=multi_processing", "--direct_num_workers=2")
  assert configs.PipelineConfig(**PATHS, metadata_path="/m.db").resolved_metadata_path == "/m.db"


def test_from_dict_rejects_unknown_keys():
  with pytest.raises(configs.ConfigError, match=r"unknown pipeline setting\(s\) \['train_step'\]"):
    configs.PipelineConfig.from_dict({**PATHS, "train_step": 10})


def test_from_dict_round_trips_and_parses_dates():
  config = configs.PipelineConfig.from_dict(
      {**PATHS, "date": "2024-03-05", "train_config": {"train_steps": 7},
       "beam_pipeline_args": ["--a=1"]})
  assert config.date == datetime.date(2024, 3, 5)
  assert config.beam_pipeline_args == ("--a=1",)
  again = configs.PipelineConfig.from_dict(dataclasses.asdict(config))
  assert again == config
  assert config.replace(
      model_config=config.model_config.replace(model="din")).model_config.model == "din"
  with pytest.raises(configs.ConfigError, match="unknown"):
    config.replace(modle="din")


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"pipeline_name": "ETA_ctr"}, "pipeline_name"),
        ({"pipeline_name": "-eta"}, "pipeline_name"),
        ({"input_format": "parquet"}, "input_format"),
        ({"rolling_window_days": 3, "eval_days": 3}, "eval_days"),
        ({"model_config": {"max_seq_len": 10, "short_seq_len": 5, "model": "din"}},
         "short sequence length"),
        ({"model_config": {"max_seq_len": features.MAX_SUPPORTED_SEQ_LEN + 1}},
         "max_seq_len"),
        ({"train_config": {"train_steps": 0}}, "train_steps"),
        ({"train_config": {"train_steps": 1.5}}, "train_steps must be an int"),
        ({"train_config": {"batch_size": True}}, "batch_size must be an int"),
        ({"train_config": {"eval_steps": None}}, "eval_steps"),
        ({"auc_lower_bound": 1.5}, "auc_lower_bound"),
        ({"max_reject_fraction": -0.1}, "max_reject_fraction"),
        ({"min_volume_ratio": 1.0}, r"min_volume_ratio must be a number in \[0, 1\)"),
        ({"min_volume_ratio": "0.5"}, "min_volume_ratio"),
        ({"history_length_edges": (1, 10)}, "history_length_edges"),
        ({"history_length_edges": (0, 10, 10)}, "history_length_edges"),
        ({"warm_start": "yes"}, "warm_start"),
        ({"date": "2024-13-01"}, "YYYY-MM-DD"),
        ({"data_root": ""}, "data_root"),
        ({"input_format": "movielens", "date": "2024-01-01"}, "one span"),
        ({"model_config": {"model": ""}}, "model"),
        ({"model_config": "eta"}, "model_config must be a ModelConfig or a dict"),
    ],
)
def test_bad_settings_are_refused(changes, message):
  with pytest.raises(configs.ConfigError, match=message):
    configs.PipelineConfig.from_dict({**PATHS, **changes})


def test_trainer_settings_nest_flags_and_hyperparameters():
  """The runners' flat trainer settings (flags, --hparam) go to the config
  that owns each; a flag's setting is not a hyperparameter."""
  assert configs.trainer_settings(
      {"model": "din", "train_steps": 5}, {"top_k": 16, "learning_rate": 0.01}) == {
          "model_config": {"model": "din", "top_k": 16},
          "train_config": {"train_steps": 5, "learning_rate": 0.01}}
  with pytest.raises(configs.ConfigError, match=r"must not set \['train_steps'\]"):
    configs.trainer_settings({}, {"train_steps": 5})
  with pytest.raises(configs.ConfigError, match=r"unknown setting\(s\) \['embeding_dim'\]"):
    configs.trainer_settings({}, {"embeding_dim": 8})


def test_ingestion_and_transform_read_the_models_history_length_and_seed():
  """One source: the model's max_seq_len is ingestion's and Transform's,
  its seed ingestion's negative-sampling seed."""
  config = configs.PipelineConfig.from_dict(
      {**PATHS, "model_config": {"max_seq_len": 512, "seed": 3}})
  assert config.max_seq_len == config.model_config.max_seq_len == 512
  assert config.seed == config.model_config.seed == 3
  with pytest.raises(configs.ConfigError, match="unknown"):
    configs.PipelineConfig.from_dict({**PATHS, "max_seq_len": 512})


def test_span_of_date_counts_days_since_epoch():
  assert configs.span_of_date(datetime.date(1970, 1, 1)) == 0
  assert configs.span_of_date(datetime.date(1970, 2, 1)) == 31
  # 2024-01-01: 54 years with 13 leap days (1972..2020).
  assert configs.span_of_date(datetime.date(2024, 1, 1)) == 54 * 365 + 13


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"model_config": {"model": "etta"}}, "unknown model variant 'etta'"),
        ({"model_config": {"top_k": 2000}}, r"top_k \(2000\) must be <= max_seq_len"),
        ({"model_config": {"max_seq_len": 64, "short_seq_len": 100}},
         "short_seq_len"),
        ({"model_config": {"dropout": 1.5}}, "dropout"),
        ({"model_config": {"num_bits": 7}}, "num_bits"),
        ({"model_config": {"use_item_ids": False, "retrieval_embedding": "item"}},
         "use_item_ids=False"),
        ({"train_config": {"learning_rate": 0.0}}, "learning_rate"),
        ({"model_config": {"embeding_dim": 8}}, r"unknown setting\(s\) \['embeding_dim'\]"),
    ],
)
def test_model_settings_are_refused_when_the_config_is_made(changes, message):
  """Before any component runs: the Trainer would refuse these after
  ExampleGen and Transform had run."""
  with pytest.raises(configs.ConfigError, match=message):
    configs.PipelineConfig.from_dict({**PATHS, **changes})


def test_trainer_configs_are_what_the_trainer_builds():
  config = configs.PipelineConfig.from_dict({
      **PATHS, **configs.trainer_settings(
          {"model": "sdim", "max_seq_len": 512, "batch_size": 32, "seed": 4,
           "train_steps": 7, "eval_steps": 3}, {"embedding_dim": 16})})
  model_config, train_config = config.trainer_configs()
  assert model_config == trainer_config.ModelConfig(
      model="sdim", max_seq_len=512, seed=4, embedding_dim=16)
  assert train_config == trainer_config.TrainConfig(
      batch_size=32, train_steps=7, eval_steps=3)
  assert config.trainer_custom_config() == {
      "model": "sdim", "max_seq_len": 512, "batch_size": 32, "seed": 4,
      "embedding_dim": 16}


def test_schema_bound_is_checked(tmp_path):
  configs.check_schema_bound(configs.PipelineConfig(**PATHS))
  short = configs.PipelineConfig.from_dict({**PATHS, "model_config": {"max_seq_len": 64}})
  with pytest.raises(configs.ConfigError, match="differs from the schema's history bound 1024"):
    configs.check_schema_bound(short)
  schema = tmp_path / "schema.pbtxt"
  schema.write_text(schema_builder.schema_text(64))
  configs.check_schema_bound(short, str(schema))
  configs.check_schema_bound(short.replace(schema_path=str(schema)))


def test_kubeflow_runner_refuses_a_max_seq_len_off_the_schema(tmp_path):
  done = subprocess.run(
      [sys.executable, "-m", "pipeline.kubeflow_runner", "--pipeline_root=gs://b/r",
       "--data_root=gs://b/d", "--serving_model_dir=gs://b/s", "--image=i:1",
       f"--output_dir={tmp_path}", "--max_seq_len=512"],
      cwd=ROOT, capture_output=True, text=True, check=False,
      env={**os.environ, "PYTHONPATH": ROOT})
  assert done.returncode == 1, done.stderr
  assert done.stderr.strip().splitlines()[-1].startswith(
      "kubeflow_runner: error: max_seq_len 512 differs from the schema's history bound 1024")
  assert not list(tmp_path.iterdir())  # nothing compiled

