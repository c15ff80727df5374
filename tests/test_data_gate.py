"""The data gate on real TFDV anomalies computed from tiny example files."""

import pytest
import tensorflow as tf

from pipeline import data_gate
from pipeline import schema_builder

BOUND = 60


def _example(hist_len=3, item_id=5, label=1):
  ex = tf.train.Example()
  f = ex.features.feature
  for name, value in (("user_id", 1), ("category_id", 2), ("timestamp", 1_700_000_000), ("label", label)):
    f[name].int64_list.value.append(value)
  if isinstance(item_id, bytes):
    f["item_id"].bytes_list.value.append(item_id)
  else:
    f["item_id"].int64_list.value.append(item_id)
  for name in ("hist_item_ids", "hist_category_ids", "hist_timestamps", "hist_behavior_types"):
    f[name].int64_list.value.extend([1] * hist_len)
  return ex.SerializeToString()


def _anomalies(tmp_path, examples):
  import tensorflow_data_validation as tfdv

  path = str(tmp_path / "examples.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    for e in examples:
      writer.write(e)
  stats = tfdv.generate_statistics_from_tfrecord(path)
  return {"train": tfdv.validate_statistics(stats, schema_builder.build_schema(BOUND))}


def test_clean_data_passes(tmp_path):
  anomalies = _anomalies(tmp_path, [_example(), _example(hist_len=BOUND, label=0)])
  summary = {"rows_read": 1000, "rows_rejected": 1}
  assert data_gate.check(anomalies, summary, max_reject_fraction=0.001) == []


def test_corrupt_examples_are_reported(tmp_path):
  anomalies = _anomalies(
      tmp_path, [_example(), _example(hist_len=BOUND + 1), _example(item_id=-5), _example(label=3)])
  problems = data_gate.check(anomalies, {"rows_read": 4, "rows_rejected": 0}, 0.0)
  text = "\n".join(problems)
  assert "feature hist_item_ids" in text and "FEATURE_TYPE_HIGH_NUMBER_VALUES" in text
  assert "feature item_id" in text
  assert "feature label" in text
  assert "feature user_id" not in text


@pytest.mark.parametrize(
    "summary,fraction,message",
    [
        ({"rows_read": 1000, "rows_rejected": 2}, 0.001, r"rejected 2 of 1000 rows \(0.20% > 0.10%\)"),
        (None, 0.001, "no ingestion summary.json"),
        ({"rows_read": 0, "rows_rejected": 0}, 0.5, "read no rows"),
        ({"rows": 3}, 0.5, "lacks rows_read"),
    ],
)
def test_rejected_rows_stop_the_run(summary, fraction, message):
  problems = data_gate.describe_rejects(summary, fraction)
  assert len(problems) == 1
  assert __import__("re").search(message, problems[0]), problems
  assert data_gate.describe_rejects({"rows_read": 1000, "rows_rejected": 1}, 0.001) == []
  assert data_gate.describe_rejects(None, 1.0) == []


def test_a_corrupt_file_stops_the_run_however_few_rows_it_was():
  summary = {"rows_read": 20_692, "rows_rejected": 1,
             "rejected_by_reason": {"corrupt_file": 1}}
  (problem,) = data_gate.describe_rejects(summary, 0.001)
  assert "could not read 1 input file(s) whole" in problem


def test_volume_problems_and_empty_splits_stop_the_run(tmp_path):
  anomalies = _anomalies(tmp_path, [_example()])
  volume = "2026-10-31: 148 impressions, 50% of the median 296 of 3 earlier day(s) (min_volume_ratio 0.7)"
  summary = {"rows_read": 1000, "rows_rejected": 0, "volume_problems": [volume],
             "examples_train": 10, "examples_eval": 0}
  assert data_gate.check(anomalies, summary, 0.001) == [
      f"volume: {volume}", "ingestion built no eval examples"]
  clean = dict(summary, volume_problems=[], examples_eval=5)
  assert data_gate.check(anomalies, clean, 0.001) == []
