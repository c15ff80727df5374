"""PipelineConfig: defaults, unknown keys refused, range checks, date spans."""

import dataclasses
import datetime

import pytest

from pipeline import configs
from preprocessing import features

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
      {**PATHS, "date": "2024-03-05", "train_steps": 7, "beam_pipeline_args": ["--a=1"]})
  assert config.date == datetime.date(2024, 3, 5)
  assert config.beam_pipeline_args == ("--a=1",)
  again = configs.PipelineConfig.from_dict(dataclasses.asdict(config))
  assert again == config
  assert config.replace(model="din").model == "din"
  with pytest.raises(configs.ConfigError, match="unknown"):
    config.replace(modle="din")


@pytest.mark.parametrize(
    "changes,message",
    [
        ({"pipeline_name": "ETA_ctr"}, "pipeline_name"),
        ({"pipeline_name": "-eta"}, "pipeline_name"),
        ({"input_format": "parquet"}, "input_format"),
        ({"rolling_window_days": 3, "eval_days": 3}, "eval_days"),
        ({"max_seq_len": 10}, "short sequence length"),
        ({"max_seq_len": features.MAX_SUPPORTED_SEQ_LEN + 1}, "max_seq_len"),
        ({"train_steps": 0}, "train_steps"),
        ({"train_steps": 1.5}, "train_steps must be an int"),
        ({"batch_size": True}, "batch_size must be an int"),
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
        ({"model": ""}, "model"),
        ({"hyperparameters": {"train_steps": 5}}, r"must not set \['train_steps'\]"),
    ],
)
def test_bad_settings_are_refused(changes, message):
  with pytest.raises(configs.ConfigError, match=message):
    configs.PipelineConfig.from_dict({**PATHS, **changes})


def test_span_of_date_counts_days_since_epoch():
  assert configs.span_of_date(datetime.date(1970, 1, 1)) == 0
  assert configs.span_of_date(datetime.date(1970, 2, 1)) == 31
  # 2024-01-01: 54 years with 13 leap days (1972..2020).
  assert configs.span_of_date(datetime.date(2024, 1, 1)) == 54 * 365 + 13
