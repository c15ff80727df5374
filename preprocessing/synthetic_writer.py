"""Writes the synthetic logs of preprocessing/synthetic_world.py to files.

`write_logs` writes, under OUTPUT_DIR, one CSV per UTC day (YYYYMMDD is the
day's date):

- `behaviors/YYYYMMDD.csv`: Taobao UserBehavior format, no header:
  `user_id,item_id,category_id,behavior_type,timestamp`.
- `impressions/YYYYMMDD.csv` (the last `impression_days` days only), header
  `user_id,item_id,category_id,timestamp,clicked`.
- `impression_truth/YYYYMMDD.csv`: the same rows in the same order with the
  true `click_probability` in place of `clicked`.
- `oracle.json`: the oracle (Bayes-optimal) AUC of the eval split (the last
  `eval_days` days of impressions) and of the train split, and counts.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from typing import Any

import numpy as np

from preprocessing import auc
from preprocessing import features
from preprocessing import synthetic_world


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """Area under the ROC curve (`preprocessing.auc`: ties count one half)."""
  return auc.auc(labels, scores, single_class_message=(
      "AUC needs both classes, got {positives} positives and {negatives} "
      "negatives: generate more users or impressions"))


def _day_name(day_start: int) -> str:
  return datetime.datetime.fromtimestamp(
      day_start, tz=datetime.timezone.utc).strftime("%Y%m%d")


def _day_slices(timestamps: np.ndarray, first_day: int, n_days: int):
  """(YYYYMMDD, slice) of each day for timestamps sorted ascending."""
  bounds = first_day + features.SECONDS_PER_DAY * np.arange(n_days + 1)
  cut = np.searchsorted(timestamps, bounds, side="left")
  for d in range(n_days):
    yield _day_name(int(bounds[d])), slice(int(cut[d]), int(cut[d + 1]))


def write_logs(config: synthetic_world.SyntheticConfig, logs: synthetic_world.SyntheticLogs,
               output_dir: str) -> dict[str, Any]:
  """Writes the day files and oracle.json; returns the oracle summary."""
  # pandas (~1 s) only to write: generating, item_latents and --help need none.
  import pandas as pd  # pylint: disable=g-import-not-at-top

  # First, so that data too small for an oracle AUC (one class only) fails
  # before any file is written.
  summary = oracle_summary(config, logs)
  first_day = config.first_day_timestamp()
  for sub in ("behaviors", "impressions", "impression_truth"):
    os.makedirs(os.path.join(output_dir, sub), exist_ok=True)
  type_names = np.array(features.BEHAVIOR_TYPES, dtype=object)
  for name, part in _day_slices(logs.behavior_timestamp, first_day,
                                config.days):
    pd.DataFrame({
        "user_id": logs.behavior_user_id[part],
        "item_id": logs.behavior_item_id[part],
        "category_id": logs.behavior_category_id[part],
        "behavior_type": type_names[logs.behavior_type[part]],
        "timestamp": logs.behavior_timestamp[part],
    }).to_csv(os.path.join(output_dir, "behaviors", f"{name}.csv"),
              header=False, index=False)

  impression_start = first_day + features.SECONDS_PER_DAY * (
      config.days - config.impression_days)
  for name, part in _day_slices(logs.impression_timestamp, impression_start,
                                config.impression_days):
    keys = {
        "user_id": logs.impression_user_id[part],
        "item_id": logs.impression_item_id[part],
        "category_id": logs.impression_category_id[part],
        "timestamp": logs.impression_timestamp[part],
    }
    pd.DataFrame({**keys, "clicked": logs.impression_clicked[part]}).to_csv(
        os.path.join(output_dir, "impressions", f"{name}.csv"), index=False)
    pd.DataFrame({
        **keys, "click_probability": logs.impression_click_probability[part]
    }).to_csv(os.path.join(output_dir, "impression_truth", f"{name}.csv"),
              index=False, float_format="%.6f")

  with open(os.path.join(output_dir, "oracle.json"), "w") as f:
    json.dump(summary, f, indent=2, sort_keys=True)
    f.write("\n")
  return summary


def oracle_summary(config: synthetic_world.SyntheticConfig,
                   logs: synthetic_world.SyntheticLogs) -> dict[str, Any]:
  """Oracle AUCs and counts of the eval and train splits."""
  eval_start = config.first_day_timestamp() + features.SECONDS_PER_DAY * (
      config.days - config.eval_days)
  is_eval = logs.impression_timestamp >= eval_start
  clicked = logs.impression_clicked
  probability = logs.impression_click_probability
  return {
      "oracle_auc_eval": roc_auc(clicked[is_eval], probability[is_eval]),
      "oracle_auc_train": roc_auc(clicked[~is_eval], probability[~is_eval]),
      "eval_days": config.eval_days,
      "eval_start_timestamp": int(eval_start),
      "impressions_eval": int(is_eval.sum()),
      "impressions_train": int((~is_eval).sum()),
      "click_rate_eval": float(clicked[is_eval].mean()),
      "mean_click_probability_eval": float(probability[is_eval].mean()),
      "behaviors": int(logs.behavior_timestamp.size),
      "config": dataclasses.asdict(config),
  }


def generate_to_dir(config: synthetic_world.SyntheticConfig, output_dir: str) -> dict[str, Any]:
  """Generates and writes the logs; returns the oracle summary."""
  return write_logs(config, synthetic_world.generate(config), output_dir)
