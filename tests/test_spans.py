"""Span rules of the ingestion ExampleGen: which files and days a span reads."""

import pytest

from preprocessing import spans
from preprocessing.spans import ExampleGenSettings

DAY = 86_400
NOV14 = 19675  # 2023-11-14 as days since 1970-01-01


def _touch_days(root, folder, days):
  (root / folder).mkdir(parents=True, exist_ok=True)
  for day in days:
    (root / folder / f"202311{day:02d}.csv").write_text("x\n")


def test_dated_files_map_dates_to_spans(tmp_path):
  _touch_days(tmp_path, "b", [14, 15])
  (tmp_path / "b" / "notes.csv").write_text("x\n")
  (tmp_path / "b" / "2023111x.csv").write_text("x\n")
  files = spans.dated_files(str(tmp_path / "b" / "{YYYY}{MM}{DD}.csv"))
  assert files == {str(tmp_path / "b" / "20231114.csv"): NOV14,
                   str(tmp_path / "b" / "20231115.csv"): NOV14 + 1}


def test_impressions_span_reads_its_window_and_history_up_to_its_day(tmp_path):
  _touch_days(tmp_path, "imp", [12, 13, 14, 15, 16])
  _touch_days(tmp_path, "beh", [10, 12, 13, 14, 15, 16, 17])
  settings = ExampleGenSettings(
      input_format="impressions", input_pattern="imp/{YYYY}{MM}{DD}.csv",
      behavior_pattern="beh/{YYYY}{MM}{DD}.csv", window_days=3, eval_days=1,
      max_seq_len=8, min_volume_ratio=0.6)
  config = spans.ingestion_config_for_span(settings, str(tmp_path), NOV14 + 1)
  assert config.min_volume_ratio == 0.6
  assert config.input_patterns == tuple(
      str(tmp_path / "imp" / f"202311{d}.csv") for d in (13, 14, 15))
  assert config.behavior_patterns == tuple(
      str(tmp_path / "beh" / f"202311{d}.csv") for d in (10, 12, 13, 14, 15))
  assert config.impression_start_timestamp == (NOV14 - 1) * DAY
  assert config.impression_end_timestamp == (NOV14 + 2) * DAY
  assert config.eval_start_timestamp == (NOV14 + 1) * DAY
  assert config.max_timestamp == (NOV14 + 3) * DAY
  assert config.max_seq_len == 8


def test_behavior_span_reads_all_behaviours_up_to_its_day(tmp_path):
  _touch_days(tmp_path, "beh", [10, 14, 15])
  settings = ExampleGenSettings(
      input_format="behavior", input_pattern="beh/{YYYY}{MM}{DD}.csv",
      window_days=2, eval_days=1)
  config = spans.ingestion_config_for_span(settings, str(tmp_path), NOV14)
  assert config.input_patterns == (
      str(tmp_path / "beh" / "20231110.csv"), str(tmp_path / "beh" / "20231114.csv"))
  assert config.impression_start_timestamp == (NOV14 - 1) * DAY


def test_patterns_without_dates_read_everything(tmp_path):
  settings = ExampleGenSettings(
      input_format="movielens", input_pattern="ml/ratings.csv",
      movies_pattern="ml/movies.csv")
  config = spans.ingestion_config_for_span(settings, "/data", 0)
  assert config.input_patterns == ("/data/ml/ratings.csv",)
  assert config.movies_patterns == ("/data/ml/movies.csv",)
  assert config.eval_start_timestamp is None


def test_a_span_without_files_is_an_error(tmp_path):
  _touch_days(tmp_path, "imp", [16])
  _touch_days(tmp_path, "beh", [16])
  settings = ExampleGenSettings(
      input_format="impressions", input_pattern="imp/{YYYY}{MM}{DD}.csv",
      behavior_pattern="beh/{YYYY}{MM}{DD}.csv", window_days=2)
  with pytest.raises(FileNotFoundError, match="imp"):
    spans.ingestion_config_for_span(settings, str(tmp_path), NOV14)


def test_settings_validation():
  with pytest.raises(ValueError, match="unknown ExampleGen settings"):
    ExampleGenSettings.from_dict({"input_format": "behavior", "input_pattern": "x",
                                  "window": 3})
  with pytest.raises(ValueError, match="eval_days"):
    ExampleGenSettings(input_format="behavior", input_pattern="{YYYY}{MM}{DD}",
                       window_days=2, eval_days=2)
  with pytest.raises(ValueError, match="behavior_pattern needs"):
    ExampleGenSettings(input_format="impressions", input_pattern="{YYYY}{MM}{DD}",
                       behavior_pattern="beh/*.csv")
  with pytest.raises(ValueError, match="input_format"):
    ExampleGenSettings(input_format="tsv", input_pattern="x")
  with pytest.raises(ValueError, match="needs behavior_patterns"):
    ExampleGenSettings(input_format="impressions", input_pattern="x")
  with pytest.raises(ValueError, match="min_history"):
    ExampleGenSettings(input_format="behavior", input_pattern="x", max_seq_len=4,
                       min_history=9)
  with pytest.raises(ValueError, match="seed"):
    ExampleGenSettings(input_format="behavior", input_pattern="x", seed=1 << 60)
