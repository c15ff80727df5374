"""Is the planted long-range signal there? Short vs whole history vs oracle.

Reads the raw files written by `preprocessing.synthetic` (pure pandas/numpy;
nothing of the Beam pipeline), builds per-impression features from the
user's behaviours STRICTLY before the impression's second, fits scikit-learn
models on the train days and scores the eval day(s):

- short: features of the last SHORT_SEQ_LEN (50) behaviours only: how many
  of them share the candidate's category / item, their share, how long ago
  the last such behaviour was, cart/fav/buy on the item, the length.
- whole: the short features plus the same over the whole history and
  long-ago indicators (first and last time the category / item was seen).
- reachable: the whole features plus what the generator knows and no log
  shows (issue 10 item 6): the same counts, shares and gaps over the
  candidate's latent CLUSTER instead of its category, and the item's true
  log popularity (`preprocessing.synthetic_world.item_latents`, recomputed from
  the config in oracle.json). What a model that learned the clusters and
  the popularity from the ids could reach; the oracle also knows the
  user's interests, which no history states exactly.
- oracle: the true click probabilities (impression_truth).

Prints a table and saves bench/results/synthetic_signal.md and .json.

Usage:
  python bench/synthetic_signal.py [--data_dir=DIR | --users=4000 --seeds=0,1,2]
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import time
from typing import Any

from absl import app
from absl import flags
import numpy as np

from preprocessing import environment
from preprocessing import features
from preprocessing import flag_parsing
from preprocessing import synthetic_world
from preprocessing import synthetic_writer

_KEY_SHIFT = 31  # positions and timestamps fit in 31 bits (Unix s < 2^31)
NO_EVENT_GAP_SECONDS = 10 ** 8  # "never seen": longer than any log
SHORT_FEATURES = (
    "short_length", "short_category_count", "short_category_share",
    "short_item_count", "short_item_strong_count",
    "short_category_log_gap", "short_item_log_gap",
)
WHOLE_FEATURES = SHORT_FEATURES + (
    "whole_log_length", "whole_category_count", "whole_category_share",
    "whole_item_count", "whole_item_strong_count",
    "whole_category_log_gap", "whole_item_log_gap",
    "whole_category_first_log_gap", "whole_item_first_log_gap",
    "older_category_count", "older_item_count",
)
# build_features' category features, computed over the latent cluster.
_CLUSTER_SOURCES = (
    "short_category_count", "short_category_share", "short_category_log_gap",
    "whole_category_count", "whole_category_share", "whole_category_log_gap",
    "whole_category_first_log_gap", "older_category_count",
)
LATENT_FEATURES = tuple(n.replace("category", "cluster") for n in _CLUSTER_SOURCES) + (
    "item_log_popularity",)
REACHABLE_FEATURES = WHOLE_FEATURES + LATENT_FEATURES


@dataclasses.dataclass(frozen=True)
class RawLogs:
  """Behaviour and impression columns read from a generated directory."""

  behaviors: Any  # pandas DataFrame
  impressions: Any  # with click_probability joined from the truth files
  eval_start_timestamp: int
  oracle: dict


def read_logs(data_dir: str) -> RawLogs:
  """Reads behaviors/, impressions/, impression_truth/ and oracle.json."""
  # pandas (~1 s) and scikit-learn (~3 s) load when a study runs: --help and
  # bench/train_bench.py's import of this module need neither.
  import pandas as pd  # pylint: disable=g-import-not-at-top

  behavior_files = sorted(glob.glob(os.path.join(data_dir, "behaviors",
                                                 "*.csv")))
  impression_files = sorted(glob.glob(os.path.join(data_dir, "impressions",
                                                   "*.csv")))
  if not behavior_files or not impression_files:
    raise FileNotFoundError(
        f"{data_dir} has no behaviors/*.csv or impressions/*.csv; generate "
        "it with `python -m preprocessing.synthetic`")
  names = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
  behaviors = pd.concat(
      [pd.read_csv(f, header=None, names=names) for f in behavior_files],
      ignore_index=True)
  parts = []
  for path in impression_files:
    shown = pd.read_csv(path)
    truth = pd.read_csv(os.path.join(data_dir, "impression_truth",
                                     os.path.basename(path)))
    if not shown[["user_id", "item_id", "timestamp"]].equals(
        truth[["user_id", "item_id", "timestamp"]]):
      raise ValueError(f"{path} and its truth file are not aligned")
    shown["click_probability"] = truth["click_probability"]
    parts.append(shown)
  impressions = pd.concat(parts, ignore_index=True)
  with open(os.path.join(data_dir, "oracle.json")) as f:
    oracle = json.load(f)
  return RawLogs(behaviors, impressions, int(oracle["eval_start_timestamp"]),
                 oracle)


class _KeyIndex:
  """Behaviours of each key (a user, or user x category...) in user order.

  Answers, for query keys and a user-position range [lo, hi): how many
  behaviours of the key fall in it, and the timestamps of the first and the
  last one before hi.
  """

  def __init__(self, key, position, timestamp):
    order = np.lexsort((position, key))
    self._packed = (key[order] << _KEY_SHIFT) | position[order]
    self._key = key[order]
    self._timestamp = timestamp[order]

  def _bound(self, key, position):
    return np.searchsorted(self._packed, (key << _KEY_SHIFT) | position,
                           side="left")

  def count(self, key, lo, hi):
    return self._bound(key, hi) - self._bound(key, lo)

  def last_timestamp_before(self, key, hi):
    """Timestamp of the key's last behaviour at a position < hi, or -1."""
    if not self._key.size:
      return np.full(key.shape, -1)
    index = self._bound(key, hi) - 1
    clipped = np.maximum(index, 0)
    found = (index >= 0) & (self._key[clipped] == key)
    return np.where(found, self._timestamp[clipped], -1)

  def first_timestamp_before(self, key, hi):
    """Timestamp of the key's first behaviour if its position is < hi, or -1."""
    if not self._key.size:
      return np.full(key.shape, -1)
    index = self._bound(key, np.zeros_like(hi))
    clipped = np.minimum(index, self._key.size - 1)
    position = self._packed[clipped] & ((1 << _KEY_SHIFT) - 1)
    found = ((index < self._key.size) & (self._key[clipped] == key)
             & (position < hi))
    return np.where(found, self._timestamp[clipped], -1)


def _pair_keys(user_a, id_a, user_b, id_b):
  """Compact int64 keys for (user, id) pairs of two tables, shared numbering."""
  both = np.concatenate([
      np.stack([user_a, id_a], axis=1), np.stack([user_b, id_b], axis=1)])
  _, inverse = np.unique(both, axis=0, return_inverse=True)
  inverse = inverse.reshape(-1).astype(np.int64)
  return inverse[:len(user_a)], inverse[len(user_a):]


def build_features(behaviors, impressions,
                   short_len: int = features.SHORT_SEQ_LEN) -> dict[str, np.ndarray]:
  """Per-impression features from behaviours strictly before its timestamp.

  Args:
    behaviors: DataFrame with user_id, item_id, category_id, behavior_type
      (pv/cart/fav/buy), timestamp.
    impressions: DataFrame with user_id, item_id, category_id, timestamp.
    short_len: length of the short history (the most recent behaviours).

  Returns:
    name -> float64 [n_impressions], names WHOLE_FEATURES (a superset of
    SHORT_FEATURES).
  """
  b_user = behaviors["user_id"].to_numpy(np.int64)
  b_time = behaviors["timestamp"].to_numpy(np.int64)
  order = np.lexsort((b_time, b_user))  # stable: file order within a second
  b_user, b_time = b_user[order], b_time[order]
  b_item = behaviors["item_id"].to_numpy(np.int64)[order]
  b_category = behaviors["category_id"].to_numpy(np.int64)[order]
  strong = (behaviors["behavior_type"].to_numpy() != features.BEHAVIOR_TYPES[0]
            )[order]
  user_first = np.searchsorted(b_user, b_user, side="left")
  b_position = np.arange(b_user.size, dtype=np.int64) - user_first

  i_user = impressions["user_id"].to_numpy(np.int64)
  i_time = impressions["timestamp"].to_numpy(np.int64)
  i_item = impressions["item_id"].to_numpy(np.int64)
  i_category = impressions["category_id"].to_numpy(np.int64)

  # hi = number of the user's behaviours strictly before the impression.
  user_index = _KeyIndex(b_user, b_time, b_time)
  hi = user_index.count(i_user, np.zeros_like(i_time), i_time)
  lo = np.maximum(hi - short_len, 0)
  zero = np.zeros_like(hi)

  b_cat_key, i_cat_key = _pair_keys(b_user, b_category, i_user, i_category)
  b_item_key, i_item_key = _pair_keys(b_user, b_item, i_user, i_item)
  category_index = _KeyIndex(b_cat_key, b_position, b_time)
  item_index = _KeyIndex(b_item_key, b_position, b_time)
  strong_index = _KeyIndex(b_item_key[strong], b_position[strong],
                           b_time[strong])

  def log_gap(timestamp, found):
    gap = np.where(found, i_time - timestamp, NO_EVENT_GAP_SECONDS)
    return np.log1p(gap.astype(np.float64))

  def share(count, length):
    return np.where(length > 0, count / np.maximum(length, 1), 0.0)

  short_category = category_index.count(i_cat_key, lo, hi)
  short_item = item_index.count(i_item_key, lo, hi)
  last_category = category_index.last_timestamp_before(i_cat_key, hi)
  last_item = item_index.last_timestamp_before(i_item_key, hi)
  # The last occurrence counts for the short history only inside its window.
  short_category_seen = short_category > 0
  short_item_seen = short_item > 0
  whole_category = category_index.count(i_cat_key, zero, hi)
  whole_item = item_index.count(i_item_key, zero, hi)
  first_category = category_index.first_timestamp_before(i_cat_key, hi)
  first_item = item_index.first_timestamp_before(i_item_key, hi)
  values = {
      "short_length": hi - lo,
      "short_category_count": short_category,
      "short_category_share": share(short_category, hi - lo),
      "short_item_count": short_item,
      "short_item_strong_count": strong_index.count(i_item_key, lo, hi),
      "short_category_log_gap": log_gap(last_category, short_category_seen),
      "short_item_log_gap": log_gap(last_item, short_item_seen),
      "whole_log_length": np.log1p(hi),
      "whole_category_count": whole_category,
      "whole_category_share": share(whole_category, hi),
      "whole_item_count": whole_item,
      "whole_item_strong_count": strong_index.count(i_item_key, zero, hi),
      "whole_category_log_gap": log_gap(last_category, whole_category > 0),
      "whole_item_log_gap": log_gap(last_item, whole_item > 0),
      "whole_category_first_log_gap": log_gap(first_category,
                                              whole_category > 0),
      "whole_item_first_log_gap": log_gap(first_item, whole_item > 0),
      "older_category_count": whole_category - short_category,
      "older_item_count": whole_item - short_item,
  }
  return {name: np.asarray(v, dtype=np.float64) for name, v in values.items()}


def latent_features(behaviors, impressions,
                    latents: dict[str, np.ndarray],
                    short_len: int = features.SHORT_SEQ_LEN) -> dict[str, np.ndarray]:
  """LATENT_FEATURES: build_features' category counts over the true cluster.

  Args:
    behaviors, impressions: as for build_features.
    latents: `preprocessing.synthetic_world.item_latents` of the generating config
      (raw item id -> cluster, log popularity).
    short_len: length of the short history.
  """
  order = np.argsort(latents["item_id"])
  raw = latents["item_id"][order]

  def lookup(item_ids, values):
    index = np.searchsorted(raw, item_ids)
    if np.any(index >= raw.size) or np.any(raw[np.minimum(index, raw.size - 1)] != item_ids):
      raise ValueError("an item id of the logs is not in the generator's catalogue")
    return values[order][index]

  cluster = lambda frame: frame.assign(category_id=lookup(  # noqa: E731
      frame["item_id"].to_numpy(np.int64), latents["cluster"]))
  values = build_features(cluster(behaviors), cluster(impressions), short_len)
  out = {name.replace("category", "cluster"): values[name] for name in _CLUSTER_SOURCES}
  out["item_log_popularity"] = lookup(
      impressions["item_id"].to_numpy(np.int64), latents["log_popularity"])
  return out


def _fit_and_score(model_name, train_x, train_y, eval_x, eval_y, seed):
  # Lazy as in read_logs().
  # pylint: disable=g-import-not-at-top
  from sklearn.ensemble import HistGradientBoostingClassifier
  from sklearn.linear_model import LogisticRegression
  from sklearn.metrics import roc_auc_score
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler
  # pylint: enable=g-import-not-at-top

  if model_name == "logistic":
    model = make_pipeline(StandardScaler(),
                          LogisticRegression(max_iter=2000, C=1.0))
  else:
    model = HistGradientBoostingClassifier(
        max_iter=200, learning_rate=0.05, max_leaf_nodes=15,
        early_stopping=False, random_state=seed)
  model.fit(train_x, train_y)
  return float(roc_auc_score(eval_y, model.predict_proba(eval_x)[:, 1]))


def run_study(data_dir: str, seed: int = 0) -> dict[str, Any]:
  """Fits short/whole models on the train days; AUCs on the eval days."""
  # Lazy as in read_logs().
  from sklearn.metrics import roc_auc_score  # pylint: disable=g-import-not-at-top

  started = time.perf_counter()
  logs = read_logs(data_dir)
  values = build_features(logs.behaviors, logs.impressions)
  config = logs.oracle.get("config")
  if config is not None:  # written by preprocessing.synthetic: the latents are known
    values.update(latent_features(
        logs.behaviors, logs.impressions,
        synthetic_world.item_latents(synthetic_world.SyntheticConfig.from_dict(config))))
  feature_seconds = time.perf_counter() - started
  impressions = logs.impressions
  is_eval = impressions["timestamp"].to_numpy() >= logs.eval_start_timestamp
  label = impressions["clicked"].to_numpy()
  if is_eval.all() or not is_eval.any():
    raise ValueError("need impressions both before and on the eval days")
  results = {
      "data_dir": data_dir,
      "behaviors": int(len(logs.behaviors)),
      "impressions_train": int((~is_eval).sum()),
      "impressions_eval": int(is_eval.sum()),
      "click_rate_eval": float(label[is_eval].mean()),
      "oracle_auc_eval": float(roc_auc_score(
          label[is_eval],
          impressions["click_probability"].to_numpy()[is_eval])),
      "oracle_auc_eval_recorded": float(logs.oracle["oracle_auc_eval"]),
      "feature_seconds": feature_seconds,
      "auc": {},
  }
  feature_sets = [("short", SHORT_FEATURES), ("whole", WHOLE_FEATURES)]
  if config is not None:
    feature_sets.append(("reachable", REACHABLE_FEATURES))
  for feature_set, names in feature_sets:
    matrix = np.stack([values[n] for n in names], axis=1)
    for model_name in ("logistic", "gbdt"):
      results["auc"][f"{feature_set}/{model_name}"] = _fit_and_score(
          model_name, matrix[~is_eval], label[~is_eval], matrix[is_eval],
          label[is_eval], seed)
  results["seconds"] = time.perf_counter() - started
  return results


def format_table(runs: list[dict[str, Any]]) -> str:
  """Markdown table: one row per generated data set."""
  lines = [
      f"| seed | behaviours | eval impressions | short (last "
      f"{features.SHORT_SEQ_LEN}) LR | short GBDT | whole LR | whole GBDT "
      "| reachable GBDT (+ latent) | oracle | whole GBDT - short GBDT "
      "| oracle - whole GBDT |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for run in runs:
    auc = run["auc"]
    lines.append(
        f"| {run.get('seed', '-')} | {run['behaviors']} | "
        f"{run['impressions_eval']} | {auc['short/logistic']:.4f} | "
        f"{auc['short/gbdt']:.4f} | {auc['whole/logistic']:.4f} | "
        f"{auc['whole/gbdt']:.4f} | "
        f"{auc['reachable/gbdt'] if 'reachable/gbdt' in auc else float('nan'):.4f} | "
        f"{run['oracle_auc_eval']:.4f} | "
        f"{auc['whole/gbdt'] - auc['short/gbdt']:+.4f} | "
        f"{run['oracle_auc_eval'] - auc['whole/gbdt']:+.4f} |")
  return "\n".join(lines)


def _define_flags():
  flags.DEFINE_string("data_dir", None,
                      "A directory written by preprocessing.synthetic; when "
                      "unset, generate one per seed under bench/scratch/.")
  flags.DEFINE_integer(
      "users", synthetic_world.SyntheticConfig.users,
      "Users to generate (no --data_dir); the generator's default.")
  flags.DEFINE_list("seeds", ["0", "1", "2"],
                    "Generator seeds (no --data_dir); the first one seeds "
                    "the models too.")
  flags.DEFINE_string("results_dir", "bench/results", "Where to save.")


def main(argv):
  flag_parsing.refuse_arguments(argv)
  environment.check_environment(import_tensorflow=False)
  try:
    seeds = [int(s) for s in flags.FLAGS.seeds]
  except ValueError:
    raise app.UsageError(
        f"--seeds must be integers, got {flags.FLAGS.seeds}") from None
  runs = []
  if flags.FLAGS.data_dir is not None:
    runs.append(run_study(flags.FLAGS.data_dir, seed=seeds[0]))
  else:
    for seed in seeds:
      config = synthetic_world.SyntheticConfig(users=flags.FLAGS.users, seed=seed)
      data_dir = os.path.join("bench", "scratch", f"synthetic_signal_{seed}")
      started = time.perf_counter()
      synthetic_writer.generate_to_dir(config, data_dir)
      generate_seconds = time.perf_counter() - started
      run = run_study(data_dir, seed=seed)
      run.update(seed=seed, generate_seconds=generate_seconds,
                 config=dataclasses.asdict(config))
      runs.append(run)
  table = format_table(runs)
  print(table)
  os.makedirs(flags.FLAGS.results_dir, exist_ok=True)
  stem = os.path.join(flags.FLAGS.results_dir, "synthetic_signal")
  with open(stem + ".md", "w") as f:
    f.write(
        "# Synthetic data: is the long-range signal there? (eval-day AUC)\n\n"
        "`python bench/synthetic_signal.py` (preprocessing.synthetic defaults"
        f", {flags.FLAGS.users} users). Features from behaviours strictly "
        "before each impression; models fit on the train days, scored on "
        "the last day. LR: logistic regression; GBDT: sklearn "
        "HistGradientBoosting. Reachable: the whole-history features plus "
        "the same counts over the generator's latent item cluster and the "
        "item's true popularity (what no log shows).\n\n")
    f.write(table + "\n")
  with open(stem + ".json", "w") as f:
    json.dump(runs, f, indent=2, sort_keys=True)
    f.write("\n")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
