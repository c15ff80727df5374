"""Tests of the synthetic log generator (preprocessing/synthetic_world.py,
synthetic_writer.py and the command line preprocessing/synthetic.py).

Every check parses the written files and recomputes from them; the oracle
AUC is checked against sklearn, the signal study's features against a
brute-force walk over the raw rows.
"""

from __future__ import annotations

import csv
import datetime
import filecmp
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from preprocessing import features
from preprocessing import synthetic_world
from preprocessing import synthetic_writer

ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY = dict(users=60, items=300, categories=5, clusters=20, days=6,
            impression_days=3, eval_days=1, min_events_per_user=20,
            max_events_per_user=200, impressions_per_user_day=4.0)


def _write(tmp_path_factory, name, **overrides):
  config = synthetic_world.SyntheticConfig(**{**TINY, **overrides})
  out = tmp_path_factory.mktemp(name)
  synthetic_writer.generate_to_dir(config, str(out))
  return config, out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  return _write(tmp_path_factory, "tiny", seed=3)


def _day_start(name: str) -> int:
  day = datetime.datetime.strptime(name, "%Y%m%d").replace(
      tzinfo=datetime.timezone.utc)
  return int(day.timestamp())


def _behaviors(out) -> pd.DataFrame:
  names = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
  parts = []
  for path in sorted((out / "behaviors").glob("*.csv")):
    frame = pd.read_csv(path, header=None, names=names)
    frame["file_day"] = path.stem
    parts.append(frame)
  return pd.concat(parts, ignore_index=True)


def _impressions(out, sub="impressions") -> pd.DataFrame:
  parts = []
  for path in sorted((out / sub).glob("*.csv")):
    frame = pd.read_csv(path)
    frame["file_day"] = path.stem
    parts.append(frame)
  return pd.concat(parts, ignore_index=True)


def _all_files(out):
  return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def test_same_seed_same_files_other_seed_other_files(tiny, tmp_path_factory):
  _, out = tiny
  _, again = _write(tmp_path_factory, "again", seed=3)
  _, other = _write(tmp_path_factory, "other", seed=4)
  files = _all_files(out)
  assert files == _all_files(again)
  _, mismatch, errors = filecmp.cmpfiles(out, again, files, shallow=False)
  assert not mismatch and not errors
  _, mismatch, _ = filecmp.cmpfiles(out, other, files, shallow=False)
  assert "behaviors/20261031.csv" in mismatch
  assert "impressions/20261031.csv" in mismatch


def test_layout_one_file_per_day_in_the_date_range(tiny):
  config, out = tiny
  days = [datetime.date(2026, 10, 31) - datetime.timedelta(days=d)
          for d in reversed(range(config.days))]
  names = [d.strftime("%Y%m%d") + ".csv" for d in days]
  assert sorted(p.name for p in (out / "behaviors").iterdir()) == names
  last = names[-config.impression_days:]
  assert sorted(p.name for p in (out / "impressions").iterdir()) == last
  assert sorted(p.name for p in (out / "impression_truth").iterdir()) == last
  assert (out / "oracle.json").is_file()


def test_behavior_rows_parse_in_taobao_format(tiny):
  config, out = tiny
  for path in (out / "behaviors").glob("*.csv"):
    start = _day_start(path.stem)
    with open(path, newline="") as f:
      for row in csv.reader(f):
        assert len(row) == 5, row
        user, item, category, kind, timestamp = row
        assert all(v.isdigit() and int(v) > 0 for v in (user, item, category))
        assert kind in features.BEHAVIOR_TYPES
        assert start <= int(timestamp) < start + features.SECONDS_PER_DAY
  behaviors = _behaviors(out)
  # Every type occurs, pv dominates as in the Taobao log.
  shares = behaviors["behavior_type"].value_counts(normalize=True)
  assert set(shares.index) == set(features.BEHAVIOR_TYPES)
  assert shares["pv"] > 0.7
  assert behaviors["user_id"].nunique() == config.users
  assert behaviors["item_id"].nunique() <= config.items
  assert behaviors["category_id"].nunique() <= config.categories


def test_each_item_has_one_fixed_category(tiny):
  _, out = tiny
  rows = pd.concat([_behaviors(out), _impressions(out)], ignore_index=True)
  assert (rows.groupby("item_id")["category_id"].nunique() == 1).all()


def test_impressions_and_truth_aligned_and_inside_their_day(tiny):
  config, out = tiny
  shown, truth = _impressions(out), _impressions(out, "impression_truth")
  assert list(shown.columns[:5]) == [
      "user_id", "item_id", "category_id", "timestamp", "clicked"]
  assert list(truth.columns[:5]) == [
      "user_id", "item_id", "category_id", "timestamp", "click_probability"]
  keys = ["user_id", "item_id", "category_id", "timestamp", "file_day"]
  pd.testing.assert_frame_equal(shown[keys], truth[keys])
  assert set(shown["clicked"].unique()) <= {0, 1}
  assert truth["click_probability"].between(0, 1, inclusive="neither").all()
  starts = shown["file_day"].map(_day_start)
  assert (shown["timestamp"] >= starts).all()
  assert (shown["timestamp"] < starts + features.SECONDS_PER_DAY).all()
  # Every impression's user has a behaviour log.
  assert set(shown["user_id"]) <= set(_behaviors(out)["user_id"])
  assert len(shown) > config.users * config.impression_days  # Poisson mean 4


def test_oracle_auc_equals_sklearn_on_the_last_day(tiny):
  config, out = tiny
  shown, truth = _impressions(out), _impressions(out, "impression_truth")
  last_day = sorted(shown["file_day"].unique())[-config.eval_days:]
  is_eval = shown["file_day"].isin(last_day).to_numpy()
  oracle = json.loads((out / "oracle.json").read_text())
  expected_eval = roc_auc_score(shown["clicked"][is_eval],
                                truth["click_probability"][is_eval])
  expected_train = roc_auc_score(shown["clicked"][~is_eval],
                                 truth["click_probability"][~is_eval])
  assert oracle["oracle_auc_eval"] == pytest.approx(expected_eval, abs=1e-12)
  assert oracle["oracle_auc_train"] == pytest.approx(expected_train, abs=1e-12)
  assert oracle["eval_days"] == config.eval_days
  assert oracle["impressions_eval"] == int(is_eval.sum())
  assert oracle["eval_start_timestamp"] == _day_start(last_day[0])
  assert oracle["behaviors"] == len(_behaviors(out))


def test_click_rate_matches_mean_probability(tmp_path_factory):
  _, out = _write(tmp_path_factory, "clicks", seed=5, users=400)
  shown, truth = _impressions(out), _impressions(out, "impression_truth")
  p = truth["click_probability"].to_numpy()
  # Four standard deviations of a sum of independent Bernoullis.
  tolerance = 4 * np.sqrt((p * (1 - p)).sum()) / p.size
  assert abs(shown["clicked"].mean() - p.mean()) < tolerance
  # Within probability bins, too (calibration of the sampled clicks).
  bins = np.digitize(p, [0.1, 0.3, 0.6])
  for b in np.unique(bins):
    q = p[bins == b]
    if q.size < 200:
      continue
    clicked = shown["clicked"].to_numpy()[bins == b]
    assert abs(clicked.mean() - q.mean()) < 4 * np.sqrt(
        (q * (1 - q)).sum()) / q.size


@pytest.mark.parametrize("low,high", [(20, 200), (75, 75), (1, 3)])
def test_events_per_user_within_the_knobs(tmp_path_factory, low, high):
  _, out = _write(tmp_path_factory, "counts", seed=7,
                  min_events_per_user=low, max_events_per_user=high)
  counts = _behaviors(out).groupby("user_id").size()
  assert len(counts) == TINY["users"]
  assert counts.min() >= low and counts.max() <= high
  if low < high:
    assert counts.nunique() > 1


def test_roc_auc_matches_sklearn_with_ties():
  rng = np.random.default_rng(0)
  labels = rng.random(500) < 0.3
  scores = rng.integers(0, 7, 500).astype(float)  # many ties
  assert synthetic_writer.roc_auc(labels, scores) == pytest.approx(
      roc_auc_score(labels, scores), abs=1e-12)
  with pytest.raises(ValueError, match="both classes"):
    synthetic_writer.roc_auc(np.ones(3), np.arange(3))


@pytest.mark.parametrize("overrides,message", [
    ({"users": 0}, "users must be >= 1"),
    ({"min_events_per_user": 100, "max_events_per_user": 50},
     "must be >= min_events_per_user"),
    ({"min_events_per_user": 0}, "min_events_per_user must be >= 1"),
    ({"items": 10, "clusters": 20}, "items .* must be >= clusters"),
    ({"categories": 30, "clusters": 20}, "clusters .* must be >= categories"),
    ({"eval_days": 3, "impression_days": 3}, "eval_days < impression_days"),
    ({"impression_days": 9, "days": 6}, "impression_days <= days"),
    ({"end_date": "31/10/2026"}, "YYYY-MM-DD"),
    ({"impressions_per_user_day": 0.0}, "impressions_per_user_day"),
    ({"users": 2.5}, "users must be int"),
    ({"max_events_per_user": 10**7}, "max_events_per_user must be <="),
])
def test_bad_config_raises_clear_error(overrides, message):
  with pytest.raises(ValueError, match=message):
    synthetic_world.SyntheticConfig(**{**TINY, **overrides})


def test_from_dict_rejects_unknown_keys():
  with pytest.raises(ValueError, match="unknown SyntheticConfig keys.*usrs"):
    synthetic_world.SyntheticConfig.from_dict({"usrs": 3})
  assert synthetic_world.SyntheticConfig.from_dict({"users": 3}).users == 3


def test_cli_writes_files_and_rejects_bad_flags(tmp_path):
  env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "PYTHONPATH": str(ROOT)}
  command = [sys.executable, "-m", "preprocessing.synthetic",
             f"--output_dir={tmp_path}", "--users=30", "--items=200",
             "--clusters=20", "--categories=5", "--days=4",
             "--impression_days=2", "--max_events_per_user=60",
             "--min_events_per_user=20"]
  good = subprocess.run(command, env=env, capture_output=True, text=True,
                        cwd=ROOT, check=False)
  assert good.returncode == 0, good.stderr
  assert "oracle_auc_eval" in json.loads(good.stdout)
  assert len(list((tmp_path / "behaviors").glob("*.csv"))) == 4
  bad = subprocess.run(command + ["--min_events_per_user=100"], env=env,
                       capture_output=True, text=True, cwd=ROOT, check=False)
  assert bad.returncode != 0
  assert "max_events_per_user (60) must be >= min_events_per_user (100)" in (
      bad.stderr)
  assert "Traceback" not in bad.stderr
  # Too small for an oracle AUC (one class only): one line, no file written.
  tiny_out = tmp_path / "one_user"
  one = subprocess.run(
      [sys.executable, "-m", "preprocessing.synthetic",
       f"--output_dir={tiny_out}", "--users=1"],
      env=env, capture_output=True, text=True, cwd=ROOT, check=False)
  assert one.returncode == 1
  assert one.stderr.strip().splitlines() == [
      "synthetic: error: AUC needs both classes, got 0 positives and 2 "
      "negatives: generate more users or impressions"], one.stderr
  assert not tiny_out.exists()
  helped = subprocess.run(command[:3] + ["--help"], env=env, capture_output=True,
                          text=True, cwd=ROOT, check=False)
  assert helped.returncode == 0 and "--users" in helped.stdout + helped.stderr


def _load_study():
  spec = importlib.util.spec_from_file_location(
      "synthetic_signal", ROOT / "bench" / "synthetic_signal.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # dataclasses resolve their module
  spec.loader.exec_module(module)
  return module


def test_signal_study_features_match_brute_force(tiny):
  _, out = tiny
  study = _load_study()
  logs = study.read_logs(str(out))
  # Keep a sample of impressions; add ones that tie with a behaviour's second.
  behaviors = logs.behaviors
  impressions = logs.impressions.iloc[::7].copy()
  tied = behaviors.iloc[::97][["user_id", "item_id", "category_id",
                               "timestamp"]]
  impressions = pd.concat([impressions, tied], ignore_index=True)
  got = study.build_features(behaviors, impressions, short_len=10)
  rows = list(behaviors.itertuples(index=False))
  for i, imp in enumerate(impressions.itertuples(index=False)):
    # Brute force: the user's rows strictly before, in time then file order.
    history = sorted(
        (r for r in rows if r.user_id == imp.user_id
         and r.timestamp < imp.timestamp), key=lambda r: r.timestamp)
    short = history[-10:]
    same_cat = [r for r in history if r.category_id == imp.category_id]
    same_item = [r for r in history if r.item_id == imp.item_id]
    assert got["short_length"][i] == len(short)
    assert got["short_category_count"][i] == sum(
        r.category_id == imp.category_id for r in short)
    assert got["short_item_count"][i] == sum(
        r.item_id == imp.item_id for r in short)
    assert got["short_item_strong_count"][i] == sum(
        r.item_id == imp.item_id and r.behavior_type != "pv" for r in short)
    assert got["whole_category_count"][i] == len(same_cat)
    assert got["whole_item_count"][i] == len(same_item)
    assert got["whole_item_strong_count"][i] == sum(
        r.behavior_type != "pv" for r in same_item)
    assert got["whole_log_length"][i] == pytest.approx(np.log1p(len(history)))
    if same_cat:
      assert got["whole_category_log_gap"][i] == pytest.approx(
          np.log1p(imp.timestamp - same_cat[-1].timestamp))
      assert got["whole_category_first_log_gap"][i] == pytest.approx(
          np.log1p(imp.timestamp - same_cat[0].timestamp))
    else:
      assert got["whole_category_log_gap"][i] == pytest.approx(
          np.log1p(study.NO_EVENT_GAP_SECONDS))


def test_seen_before_matches_brute_force():
  rng = np.random.default_rng(1)
  event_user = rng.integers(0, 5, 300)
  event_item = rng.integers(0, 20, 300)
  event_time = rng.integers(0, 100, 300)
  user = rng.integers(0, 6, 200)
  item = rng.integers(0, 21, 200)
  time = rng.integers(0, 110, 200)
  got = synthetic_world._seen_before(event_user, event_item, event_time, 21, user,
                               item, time)
  events = list(zip(event_user, event_item, event_time))
  expected = [any(u == qu and i == qi and t < qt for u, i, t in events)
              for qu, qi, qt in zip(user, item, time)]
  assert got.tolist() == expected
  assert 0 < sum(expected) < len(expected)


def test_whole_history_features_beat_the_last_50_and_the_oracle_beats_both(
    tmp_path):
  # The planted long-range signal, at a small scale with a fixed seed: the
  # same logistic regression scores higher on whole-history features than on
  # last-50 ones, and the true probabilities score higher still.
  config = synthetic_world.SyntheticConfig(users=400, seed=0, items=3000,
                                     clusters=150, categories=30)
  synthetic_writer.generate_to_dir(config, str(tmp_path))
  study = _load_study()
  logs = study.read_logs(str(tmp_path))
  values = study.build_features(logs.behaviors, logs.impressions)
  is_eval = (logs.impressions["timestamp"] >= logs.eval_start_timestamp
             ).to_numpy()
  label = logs.impressions["clicked"].to_numpy()
  auc = {}
  for name, columns in (("short", study.SHORT_FEATURES),
                        ("whole", study.WHOLE_FEATURES)):
    matrix = np.stack([values[c] for c in columns], axis=1)
    auc[name] = study._fit_and_score("logistic", matrix[~is_eval],
                                     label[~is_eval], matrix[is_eval],
                                     label[is_eval], seed=0)
  oracle = json.loads((tmp_path / "oracle.json").read_text())["oracle_auc_eval"]
  assert auc["whole"] > auc["short"] + 0.03, auc
  assert oracle > auc["whole"] + 0.02, (auc, oracle)


def test_item_latents_are_the_world_of_the_generated_logs(tiny):
  config, out = tiny
  latents = synthetic_world.item_latents(config)
  rows = pd.concat([_behaviors(out), _impressions(out)], ignore_index=True)
  cluster_of = dict(zip(latents["item_id"].tolist(), latents["cluster"].tolist()))
  assert set(rows["item_id"]) <= set(cluster_of)
  rows["cluster"] = rows["item_id"].map(cluster_of)
  # Clusters lie inside categories, as the generator builds them.
  assert (rows.groupby("cluster")["category_id"].nunique() == 1).all()
  # Behaviours pick items by popularity within a cluster.
  popularity = dict(zip(latents["item_id"].tolist(), latents["log_popularity"].tolist()))
  seen = _behaviors(out)["item_id"].value_counts()
  assert np.corrcoef(np.log(seen.to_numpy()),
                     [popularity[i] for i in seen.index])[0, 1] > 0.2


def test_signal_study_cluster_counts_lie_between_item_and_category(tiny):
  config, out = tiny
  study = _load_study()
  logs = study.read_logs(str(out))
  whole = study.build_features(logs.behaviors, logs.impressions, short_len=10)
  latent = study.latent_features(logs.behaviors, logs.impressions,
                                 synthetic_world.item_latents(config), short_len=10)
  assert set(latent) == set(study.LATENT_FEATURES)
  for window in ("short", "whole"):
    cluster = latent[f"{window}_cluster_count"]
    assert np.all(whole[f"{window}_item_count"] <= cluster)
    assert np.all(cluster <= whole[f"{window}_category_count"])
  assert np.any(latent["whole_cluster_count"] < whole["whole_category_count"])
  assert np.all(latent["whole_cluster_log_gap"] >= whole["whole_category_log_gap"])
