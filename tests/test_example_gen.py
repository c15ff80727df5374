"""The ingestion ExampleGen in a one-component LocalDagRunner pipeline.

Daily behaviour and impression files; the latest span (2023-11-16) with a
two-day window must give train = impressions of the 15th, eval = the 16th,
with histories from behaviour files dated up to the 16th only, each equal to
a brute-force recomputation from the raw rows.
"""

import json
import os
import random

import pytest

DAY = 86_400
NOV14 = 19675 * DAY  # 2023-11-14T00:00:00Z
TYPES = ("pv", "cart", "fav", "buy")


def _write_days(folder, rows_by_day, header=None):
  os.makedirs(folder, exist_ok=True)
  for day, rows in rows_by_day.items():
    lines = ([header] if header else []) + [",".join(map(str, r)) for r in rows]
    with open(os.path.join(folder, f"202311{day}.csv"), "w") as handle:
      handle.write("\n".join(lines) + "\n")


def brute_force(behaviors, impressions, max_seq_len, eval_start):
  out = set()
  for user, item, cat, ts, label in impressions:
    earlier = sorted((b[4], b[1], b[2], b[3]) for b in behaviors
                     if b[0] == user and b[4] < ts)[-max_seq_len:]
    out.add(("eval" if ts >= eval_start else "train", (
        user, item, cat, ts, label, tuple(h[1] for h in earlier),
        tuple(h[2] for h in earlier), tuple(h[0] for h in earlier),
        tuple(h[3] for h in earlier))))
  return out


@pytest.mark.e2e
def test_example_gen_span_splits_match_brute_force(tmp_path):
  import tensorflow as tf
  from tfx.orchestration import metadata
  from tfx.orchestration import pipeline as tfx_pipeline
  from tfx.orchestration.local.local_dag_runner import LocalDagRunner

  from preprocessing import example_gen
  from preprocessing.spans import ExampleGenSettings

  rng = random.Random(4)
  base = tmp_path / "input"
  behaviors_by_day, impressions_by_day = {}, {}
  for offset, day in enumerate((14, 15, 16, 17)):
    start = NOV14 + offset * DAY
    behaviors_by_day[day] = [
        (rng.randrange(4), rng.randrange(20), rng.randrange(3), rng.randrange(4),
         start + rng.randrange(0, DAY, 3600)) for _ in range(25)]
    if day != 17:
      impressions_by_day[day] = [
          (rng.randrange(5), rng.randrange(20), rng.randrange(3),
           start + rng.randrange(0, DAY, 3600), rng.randrange(2)) for _ in range(12)]
  # A late row in the 17th's file dated the 15th: the span of the 16th must not read it.
  behaviors_by_day[17].append((0, 99, 9, 0, NOV14 + DAY + 5))
  typed = {d: [(u, i, c, TYPES[k], t) for u, i, c, k, t in rows]
           for d, rows in behaviors_by_day.items()}
  typed[15].append(("bad", 1, 1, "pv", NOV14 + DAY))
  _write_days(base / "behaviors", typed)
  _write_days(base / "impressions", impressions_by_day,
              header="user_id,item_id,category_id,timestamp,clicked")

  settings = ExampleGenSettings(
      input_format="impressions", input_pattern="impressions/{YYYY}{MM}{DD}.csv",
      behavior_pattern="behaviors/{YYYY}{MM}{DD}.csv", window_days=2, eval_days=1,
      max_seq_len=5, min_history=0)
  gen = example_gen.create_example_gen(str(base), settings)
  root = tmp_path / "root"
  pipeline = tfx_pipeline.Pipeline(
      pipeline_name="ingestion-example-gen-test",
      pipeline_root=str(root),
      components=[gen],
      metadata_connection_config=metadata.sqlite_metadata_connection_config(
          str(tmp_path / "mlmd.sqlite")),
      beam_pipeline_args=["--direct_num_workers=1"],
  )
  LocalDagRunner().run(pipeline)

  (uri,) = tf.io.gfile.glob(str(root / gen.id / "examples" / "*"))
  assert sorted(os.listdir(uri)) == [
      "Split-eval", "Split-train", "rejected", "summary.json"]
  got = set()
  for split in ("train", "eval"):
    files = tf.io.gfile.glob(os.path.join(uri, f"Split-{split}", "*.gz"))
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
      f = tf.train.Example.FromString(record.numpy()).features.feature
      ints = lambda n: tuple(f[n].int64_list.value)
      got.add((split, (
          ints("user_id")[0], ints("item_id")[0], ints("category_id")[0],
          ints("timestamp")[0], ints("label")[0], ints("hist_item_ids"),
          ints("hist_category_ids"), ints("hist_timestamps"),
          ints("hist_behavior_types"))))
  history = [r for d in (14, 15, 16) for r in behaviors_by_day[d]]
  window = impressions_by_day[15] + impressions_by_day[16]
  want = brute_force(history, window, 5, NOV14 + 2 * DAY)
  assert got == want
  assert {s for s, _ in got} == {"train", "eval"}
  with open(os.path.join(uri, "summary.json")) as handle:
    summary = json.load(handle)
  assert summary["rows_rejected"] == 1 and summary["rejected_by_reason"]["non_numeric_id"] == 1
  assert summary["rows_read"] == 3 * 25 + 1 + 24
  assert summary["examples_train"] == 12 and summary["examples_eval"] == 12


def test_the_pipeline_passes_its_volume_threshold_to_daily_spans_only():
  from pipeline import configs
  from pipeline import pipeline as pipeline_lib
  from preprocessing import example_gen

  paths = {"data_root": "/d", "pipeline_root": "/p", "serving_model_dir": "/s"}

  def ratio(**values):
    component = pipeline_lib.example_gen_component(configs.PipelineConfig(**paths, **values))
    return example_gen.settings_from_exec_properties(
        component.exec_properties).min_volume_ratio

  assert ratio() == 0.7
  assert ratio(min_volume_ratio=0.4) == 0.4
  assert ratio(input_format="movielens") == 0  # one span: nothing to compare with
