"""The ingestion job end to end: files in, TFRecords + dead letters + summary out.

Expected examples are recomputed from the good raw rows by brute force (a
scan of the whole log per impression). Beam runs in-process, except the e2e
test, which runs the CLI in a subprocess on the multi-process DirectRunner.
"""

import dataclasses
import gzip
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from preprocessing import ingest_job
from preprocessing import ingest_parse
from preprocessing import ingest_read
from preprocessing import ingest_summary
from preprocessing import ingest_write

DAY = 86_400
T0 = 1_700_000_000 - 1_700_000_000 % DAY
IN_PROCESS = ["--runner=DirectRunner"]
MAX_TS = 1_800_000_000


def brute_force(behaviors, impressions, max_seq_len, min_history, eval_days, with_types=True):
  """behaviors: (user, item, cat, type, ts); impressions: (user, item, cat, ts, label)."""
  if not impressions:
    return set()
  eval_start = (max(i[3] for i in impressions) // DAY - eval_days + 1) * DAY
  out = set()
  for user, item, cat, ts, label in impressions:
    earlier = sorted(
        (b[4], b[1], b[2], b[3]) for b in behaviors if b[0] == user and b[4] < ts
    )
    if len(earlier) < min_history:
      continue
    hist = earlier[-max_seq_len:]
    out.add(("eval" if ts >= eval_start else "train", (
        user, item, cat, ts, label, tuple(h[1] for h in hist),
        tuple(h[2] for h in hist), tuple(h[0] for h in hist),
        tuple(h[3] for h in hist) if with_types else None)))
  return out


def read_examples(output_dir):
  import tensorflow as tf

  out = set()
  for split in ("train", "eval"):
    files = tf.io.gfile.glob(os.path.join(output_dir, split, "*.tfrecord.gz"))
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
      f = tf.train.Example.FromString(record.numpy()).features.feature
      ints = lambda n: tuple(f[n].int64_list.value)
      out.add((split, (
          ints("user_id")[0], ints("item_id")[0], ints("category_id")[0],
          ints("timestamp")[0], ints("label")[0], ints("hist_item_ids"),
          ints("hist_category_ids"), ints("hist_timestamps"),
          ints("hist_behavior_types") if "hist_behavior_types" in f else None)))
  return out


def read_rejects(output_dir):
  rejects = []
  for name in sorted(os.listdir(os.path.join(output_dir, "rejected"))):
    with open(os.path.join(output_dir, "rejected", name)) as handle:
      rejects += [json.loads(line) for line in handle]
  return rejects


GOOD_BEHAVIORS = [  # (user, item, cat, type index, ts)
    (1, 10, 100, 0, T0 + 5), (1, 11, 101, 1, T0 + 5), (1, 12, 102, 2, T0 + 9),
    (1, 13, 103, 3, T0 + DAY + 4), (2, 20, 200, 0, T0 + 1), (2, 21, 200, 0, T0 + 2 * DAY),
    (3, 30, 300, 0, T0 + 2),
]
TYPES = ("pv", "cart", "fav", "buy")
# Every malformed kind of behaviour row, with the reason it must get.
BAD_BEHAVIOR_LINES = [
    ("", ingest_parse.EMPTY_LINE),
    ("1,2,3,pv", ingest_parse.WRONG_COLUMN_COUNT),
    ("1,2,3,pv,1700000000,7", ingest_parse.WRONG_COLUMN_COUNT),
    (",2,3,pv,1700000000", ingest_parse.MISSING_FIELD),
    ("abc,2,3,pv,1700000000", ingest_parse.NON_NUMERIC_ID),
    ("1,-2,3,pv,1700000000", ingest_parse.NEGATIVE_ID),
    ("1,99999999999999999999,3,pv,1700000000", ingest_parse.ID_OUT_OF_RANGE),
    ("1,2,3,pv,-1", ingest_parse.BAD_TIMESTAMP),
    ("1,2,3,pv,12", ingest_parse.BAD_TIMESTAMP),
    ("1,2,3,pv,1900000000", ingest_parse.BAD_TIMESTAMP),
    ("1,2,3,like,1700000000", ingest_parse.UNKNOWN_BEHAVIOR_TYPE),
]
GOOD_IMPRESSIONS = [  # (user, item, cat, ts, label)
    (1, 50, 500, T0 + 5, 1), (1, 51, 501, T0 + 9, 0), (1, 52, 502, T0 + DAY + 4, 1),
    (2, 60, 600, T0 + 2 * DAY, 0), (2, 61, 601, T0 + 2 * DAY + 30, 1),
    (4, 70, 700, T0 + DAY, 1),
]
BAD_IMPRESSION_LINES = [
    ("1,50,500,1700000000,3", ingest_parse.BAD_LABEL),
    ("1,50,500,1700000000", ingest_parse.WRONG_COLUMN_COUNT),
    ("1,x,500,1700000000,1", ingest_parse.NON_NUMERIC_ID),
]
IMPRESSION_HEADER = "user_id,item_id,category_id,timestamp,clicked"


def _behavior_line(row):
  user, item, cat, kind, ts = row
  return f"{user},{item},{cat},{TYPES[kind]},{ts}"


def _write(path, lines, compress=False):
  text = "\n".join(lines) + "\n"
  if compress:
    with gzip.open(path, "wt") as handle:
      handle.write(text)
  else:
    path.write_text(text)
  return str(path)


def _impressions_config(tmp_path, **overrides):
  raw = tmp_path / "raw"
  raw.mkdir()
  # Good and bad rows interleaved over two files, one gzip; invalid UTF-8 too.
  lines = [_behavior_line(r) for r in GOOD_BEHAVIORS]
  bad = [line for line, _ in BAD_BEHAVIOR_LINES]
  _write(raw / "behaviors_a.csv.gz", lines[:4] + bad[:5], compress=True)
  _write(raw / "behaviors_b.csv", lines[4:] + bad[5:])
  with open(raw / "behaviors_b.csv", "ab") as handle:
    handle.write(b"1,2,3,pv,17000\xff0000\n")
  imp_lines = [",".join(map(str, r)) for r in GOOD_IMPRESSIONS]
  bad_imps = [line for line, _ in BAD_IMPRESSION_LINES]
  # File 1 has its header; file 2 has none and a stray header in the middle.
  _write(raw / "impressions_1.csv", [IMPRESSION_HEADER] + imp_lines[:3] + bad_imps)
  _write(raw / "impressions_2.csv", imp_lines[3:4] + [IMPRESSION_HEADER] + imp_lines[4:])
  settings = dict(
      input_format="impressions",
      input_patterns=(str(raw / "impressions_*.csv"),),
      behavior_patterns=(str(raw / "behaviors_*"),),
      max_seq_len=2, min_history=0, eval_days=1, max_timestamp=MAX_TS,
  )
  settings.update(overrides)
  return ingest_job.IngestionConfig(**settings)


def test_malformed_rows_go_to_dead_letters_and_every_row_is_accounted_for(tmp_path):
  config = _impressions_config(tmp_path)
  out = str(tmp_path / "out")
  summary = ingest_job.run(config, out, IN_PROCESS)

  expected_reasons = [r for _, r in BAD_BEHAVIOR_LINES + BAD_IMPRESSION_LINES]
  expected_reasons.append(ingest_parse.BAD_ENCODING)
  rejects = read_rejects(out)
  assert sorted(r["reason"] for r in rejects) == sorted(expected_reasons)
  bad_lines = {line for line, _ in BAD_BEHAVIOR_LINES + BAD_IMPRESSION_LINES}
  assert {r["line"] for r in rejects} - {"1,2,3,pv,17000\ufffd0000"} == bad_lines
  assert all(r["source"].startswith(str(tmp_path / "raw")) for r in rejects)
  by_reason = {reason: expected_reasons.count(reason) for reason in ingest_parse.REJECT_REASONS}
  assert summary["rejected_by_reason"] == by_reason
  good = len(GOOD_BEHAVIORS) + len(GOOD_IMPRESSIONS)
  assert summary["rows_valid"] == good
  assert summary["rows_rejected"] == len(expected_reasons)
  assert summary["rows_read"] == good + len(expected_reasons)
  assert summary["header_lines"] == 2

  want = brute_force(GOOD_BEHAVIORS, GOOD_IMPRESSIONS, 2, 0, 1)
  got = read_examples(out)
  assert got == want
  assert summary["examples_train"] == sum(s == "train" for s, _ in want)
  assert summary["examples_eval"] == sum(s == "eval" for s, _ in want)
  # Written summary equals the returned one and the file is what the CLI prints.
  with open(os.path.join(out, "summary.json")) as handle:
    assert json.load(handle) == summary
  # Daily volume of the impression days, counted independently.
  import datetime
  day = lambda ts: (datetime.date(1970, 1, 1) + datetime.timedelta(days=ts // DAY)).isoformat()
  days = sorted({day(i[3]) for i in GOOD_IMPRESSIONS})
  assert summary["volume_by_day"] == {d: {
      "behaviors": sum(day(b[4]) == d for b in GOOD_BEHAVIORS),
      "impressions": sum(day(i[3]) == d for i in GOOD_IMPRESSIONS),
      "examples": sum(day(e[3]) == d for _, e in want),
  } for d in days}
  assert summary["volume_problems"] == []
  # No staging directory is left beside the output.
  assert sorted(os.listdir(tmp_path)) == ["out", "raw"]


def test_min_history_skips_are_counted(tmp_path):
  config = _impressions_config(tmp_path, min_history=2, max_seq_len=3, eval_days=2)
  summary = ingest_job.run(config, str(tmp_path / "out"), IN_PROCESS)
  want = brute_force(GOOD_BEHAVIORS, GOOD_IMPRESSIONS, 3, 2, 2)
  assert read_examples(str(tmp_path / "out")) == want
  assert summary["impressions_below_min_history"] == len(GOOD_IMPRESSIONS) - len(want)
  assert summary["impressions"] == len(GOOD_IMPRESSIONS)


def test_parquet_input_gives_the_same_examples_as_csv(tmp_path):
  raw = tmp_path / "pq"
  raw.mkdir()
  columns = list(zip(*[(u, i, c, TYPES[k], t) for u, i, c, k, t in GOOD_BEHAVIORS]))
  pq.write_table(pa.table(dict(zip(ingest_parse.BEHAVIOR_COLUMNS, columns))),
                 raw / "behaviors.parquet")
  imp_columns = list(zip(*GOOD_IMPRESSIONS))
  table = pa.table(dict(zip(ingest_parse.IMPRESSION_COLUMNS, imp_columns)))
  pq.write_table(table, raw / "impressions.parquet")
  bad = pa.table({"user_id": [1], "item_id": [-3], "category_id": [1],
                  "timestamp": [T0], "clicked": [1]})
  pq.write_table(bad, raw / "impressions_bad.parquet")
  config = ingest_job.IngestionConfig(
      input_format="impressions", input_patterns=(str(raw / "impressions*.parquet"),),
      behavior_patterns=(str(raw / "behaviors.parquet"),), max_seq_len=2,
      min_history=0, max_timestamp=MAX_TS)
  summary = ingest_job.run(config, str(tmp_path / "out"), IN_PROCESS)
  assert read_examples(str(tmp_path / "out")) == brute_force(
      GOOD_BEHAVIORS, GOOD_IMPRESSIONS, 2, 0, 1)
  assert summary["rejected_by_reason"]["negative_id"] == 1
  (reject,) = read_rejects(str(tmp_path / "out"))
  assert json.loads(reject["line"])["item_id"] == -3


MOVIES = [
    "movieId,title,genres",
    "1,Toy Story (1995),Adventure|Animation|Children",
    '2,"American President, The (1995)",Comedy|Drama|Romance',
    "3,Nothing (2000),(no genres listed)",
    "4,Broken,",
]
RATINGS = [  # (user, movie, rating, ts)
    (1, 1, 4.0, T0 + 10), (1, 2, 3.5, T0 + 10), (1, 3, 5.0, T0 + 20),
    (1, 2, 4.5, T0 + DAY + 1), (2, 3, 1.0, T0 + 3), (2, 1, 4.0, T0 + DAY + 7),
]
MOVIE_CATEGORY = {1: 2, 2: 5, 3: 20}  # first genre's position in MOVIELENS_GENRES


def test_movielens_goes_through_the_same_path(tmp_path):
  raw = tmp_path / "ml"
  raw.mkdir()
  _write(raw / "movies.csv", MOVIES)
  lines = ["userId,movieId,rating,timestamp"]
  lines += [f"{u},{m},{r},{t}" for u, m, r, t in RATINGS]
  lines += ["1,9,4.0,1700000000", "1,1,6.0,1700000000"]  # unknown movie, bad rating
  _write(raw / "ratings.csv", lines)
  config = ingest_job.IngestionConfig(
      input_format="movielens", input_patterns=(str(raw / "ratings.csv"),),
      movies_patterns=(str(raw / "movies.csv"),), max_seq_len=2, min_history=1,
      max_timestamp=MAX_TS)
  out = str(tmp_path / "out")
  summary = ingest_job.run(config, out, IN_PROCESS)
  behaviors = [(u, m, MOVIE_CATEGORY[m], -1, t) for u, m, _, t in RATINGS]
  impressions = [(u, m, MOVIE_CATEGORY[m], t, int(r >= 4)) for u, m, r, t in RATINGS]
  want = brute_force(behaviors, impressions, 2, 1, 1, with_types=False)
  assert len(want) == 3
  assert read_examples(out) == want
  assert sorted(r["reason"] for r in read_rejects(out)) == [
      "bad_rating", "missing_field", "unknown_item"]
  unknown = next(r for r in read_rejects(out) if r["reason"] == "unknown_item")
  assert unknown["line"] == "1,9,4.0,1700000000"
  assert unknown["source"].endswith("ratings.csv")
  assert summary["rows_read"] == 4 + 8 and summary["rows_valid"] == 3 + 6
  assert summary["header_lines"] == 2


def test_behavior_format_positives_negatives_and_determinism(tmp_path):
  raw = tmp_path / "raw"
  raw.mkdir()
  _write(raw / "b.csv", [_behavior_line(r) for r in GOOD_BEHAVIORS])
  config = ingest_job.IngestionConfig(
      input_format="behavior", input_patterns=(str(raw / "b.csv"),),
      max_seq_len=4, min_history=1, neg_per_pos=2, seed=3, max_timestamp=MAX_TS)
  # Every example is in the eval day: no train split, allowed here.
  ingest_job.run(config, str(tmp_path / "a"), IN_PROCESS, allow_empty_split=True)
  first = read_examples(str(tmp_path / "a"))
  summary = ingest_job.run(config, str(tmp_path / "b"), IN_PROCESS, allow_empty_split=True)
  assert read_examples(str(tmp_path / "b")) == first
  # Each pv with an earlier behaviour is a positive, with two negatives that
  # share its history and never repeat its item.
  positives = [(u, i, c, t, 1) for u, i, c, k, t in GOOD_BEHAVIORS if k == 0]
  expected_positives = {ex for ex in brute_force(GOOD_BEHAVIORS, positives, 4, 1, 1)}
  assert {e for e in first if e[1][4] == 1} == expected_positives
  catalogue = {i: c for _, i, c, _, _ in GOOD_BEHAVIORS}
  for split, pos in expected_positives:
    negs = [ex for s, ex in first
            if ex[4] == 0 and (ex[0], ex[3]) == (pos[0], pos[3])]
    assert len(negs) == 2
    for neg in negs:
      assert neg[1] != pos[1] and catalogue[neg[1]] == neg[2]
      assert neg[5:] == pos[5:]
  # Every pv is sampled for, also those later skipped for a short history.
  assert summary["negatives_sampled"] == 2 * len(positives)
  assert summary["impressions_below_min_history"] == 3 * (
      len(positives) - len(expected_positives))


def test_config_validation():
  with pytest.raises(ValueError, match="unknown ingestion settings"):
    ingest_job.IngestionConfig.from_dict(
        {"input_format": "behavior", "input_patterns": ["x"], "max_seq_length": 5})
  with pytest.raises(ValueError, match="needs behavior_patterns"):
    ingest_job.IngestionConfig(input_format="impressions", input_patterns=("x",))
  with pytest.raises(ValueError, match="only read for 'impressions'"):
    ingest_job.IngestionConfig(input_format="behavior", input_patterns=("x",),
                              behavior_patterns=("y",))
  with pytest.raises(ValueError, match="input_format"):
    ingest_job.IngestionConfig(input_format="csv", input_patterns=("x",))
  with pytest.raises(ValueError, match="min_history"):
    ingest_job.IngestionConfig(input_format="behavior", input_patterns=("x",),
                              max_seq_len=2, min_history=3)


def test_a_glob_matching_nothing_is_an_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no file matches"):
    ingest_read.expand_patterns([str(tmp_path / "nothing*.csv")])


def test_summary_check_catches_unaccounted_rows():
  summary = {"rows_read": 10, "rows_valid": 7, "rows_rejected": 2}
  with pytest.raises(ingest_summary.SummaryMismatchError, match="rows_read=10"):
    ingest_summary.check_summary(summary)


def test_local_runner_defaults_only_without_a_runner():
  assert ingest_job.beam_args_with_defaults([]) == [
      "--direct_running_mode=multi_processing", "--direct_num_workers=2"]
  assert ingest_job.beam_args_with_defaults(["--runner=FlinkRunner"]) == [
      "--runner=FlinkRunner"]
  assert ingest_job.beam_args_with_defaults(["--runner", "SparkRunner"]) == [
      "--runner", "SparkRunner"]


@pytest.mark.e2e
def test_cli_on_the_multiprocess_direct_runner(tmp_path):
  """The absl CLI with its default 2-worker multi_processing DirectRunner: the
  summary (and the Beam counters it is checked against) come back from the
  workers, and the examples equal the brute force."""
  config = _impressions_config(tmp_path)
  out = str(tmp_path / "out")
  env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2",
             PYTHONPATH=os.getcwd())
  proc = subprocess.run(
      [sys.executable, "-m", "preprocessing.build_examples",
       f"--input={config.input_patterns[0]}", "--input_format=impressions",
       f"--behavior_log={config.behavior_patterns[0]}", f"--output_dir={out}",
       "--max_seq_len=2", "--min_history=0", f"--max_timestamp={MAX_TS}"],
      capture_output=True, text=True, timeout=300, env=env)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "multi_processing" in proc.stderr
  printed = json.loads(proc.stdout[proc.stdout.index("{"):])
  assert printed["rows_read"] == printed["rows_valid"] + printed["rows_rejected"]
  assert printed["rows_rejected"] == len(BAD_BEHAVIOR_LINES) + len(BAD_IMPRESSION_LINES) + 1
  assert read_examples(out) == brute_force(GOOD_BEHAVIORS, GOOD_IMPRESSIONS, 2, 0, 1)


def _small_impressions(raw, impression_lines, name="impressions.csv"):
  """A behaviour log and one impressions file of raw bytes (line ends and all)."""
  raw.mkdir(exist_ok=True)
  _write(raw / "behaviors.csv", [_behavior_line(r) for r in GOOD_BEHAVIORS])
  (raw / name).write_bytes(impression_lines)
  return ingest_job.IngestionConfig(
      input_format="impressions", input_patterns=(str(raw / name),),
      behavior_patterns=(str(raw / "behaviors.csv"),), max_seq_len=2,
      min_history=0, eval_days=1, max_timestamp=MAX_TS)


def _impression_bytes(rows, end=b"\n"):
  return end.join(",".join(map(str, r)).encode() for r in rows) + end


def test_cr_only_line_ends_and_a_bom_before_the_header_lose_no_row(tmp_path):
  """Old-Mac (CR-only) line ends and a UTF-8 BOM, gzipped: every row is read."""
  data = b"\xef\xbb\xbf" + IMPRESSION_HEADER.encode() + b"\r" + _impression_bytes(
      GOOD_IMPRESSIONS, b"\r")
  config = _small_impressions(tmp_path / "raw", gzip.compress(data), "impressions.csv.gz")
  summary = ingest_job.run(config, str(tmp_path / "out"), IN_PROCESS)
  assert summary["rows_rejected"] == 0 and summary["header_lines"] == 1
  assert summary["rows_valid"] == len(GOOD_BEHAVIORS) + len(GOOD_IMPRESSIONS)
  assert read_examples(str(tmp_path / "out")) == brute_force(
      GOOD_BEHAVIORS, GOOD_IMPRESSIONS, 2, 0, 1)


def test_a_truncated_gzip_fails_the_job_naming_the_file(tmp_path):
  """Beam's own reader returned the rows before the cut and exited 0."""
  rows = [(1, 50 + i, 500, T0 + 5 + i, i % 2) for i in range(3000)] + list(GOOD_IMPRESSIONS)
  whole = gzip.compress(_impression_bytes(rows))
  config = _small_impressions(tmp_path / "raw", whole[: len(whole) // 2], "impressions.csv.gz")
  out = tmp_path / "out"
  with pytest.raises(ingest_read.CorruptFileError) as raised:
    ingest_job.run(config, str(out), IN_PROCESS)
  message = str(raised.value)
  assert "impressions.csv.gz" in message and "EOFError" in message, message
  assert "\n" not in message
  assert not out.exists() and os.listdir(tmp_path) == ["raw"]  # nothing half-written
  # As a dead letter: the whole file is one corrupt_file reject, none of its rows read.
  import apache_beam as beam
  with beam.Pipeline(argv=IN_PROCESS) as pipeline:
    outputs = ingest_job.expand_ingestion(pipeline, config)
    ingest_write.write_side_outputs(outputs, str(tmp_path / "side"))
  summary = ingest_summary.read_summary(str(tmp_path / "side"))
  assert summary["rejected_by_reason"]["corrupt_file"] == 1 and summary["rows_rejected"] == 1
  assert summary["impressions"] == 0
  (reject,) = ingest_write.read_rejects(str(tmp_path / "side"))
  assert reject["source"].endswith("impressions.csv.gz") and reject["line"] == ""


def test_a_reused_output_dir_is_refused_and_overwrite_replaces_it_whole(tmp_path):
  config = _small_impressions(tmp_path / "raw", _impression_bytes(GOOD_IMPRESSIONS))
  out = str(tmp_path / "out")
  ingest_job.run(config, out, IN_PROCESS)
  (tmp_path / "out" / "train" / "part-00000-of-00002.tfrecord.gz").write_bytes(b"old")
  with pytest.raises(ingest_write.OutputDirError, match="not empty; pass --overwrite"):
    ingest_job.run(config, out, IN_PROCESS)
  # Fewer impressions now: only they are in the output, no shard of the first run.
  fewer = GOOD_IMPRESSIONS[1:]
  (tmp_path / "raw" / "impressions.csv").write_bytes(_impression_bytes(fewer))
  summary = ingest_job.run(config, out, IN_PROCESS, overwrite=True)
  assert read_examples(out) == brute_force(GOOD_BEHAVIORS, fewer, 2, 0, 1)
  assert "part-00000-of-00002.tfrecord.gz" not in os.listdir(os.path.join(out, "train"))
  assert summary["impressions"] == len(fewer)
  # An output_dir that cannot be made: one clear error before any work.
  (tmp_path / "a_file").write_text("x")
  with pytest.raises(ingest_write.OutputDirError, match="cannot write beside output_dir"):
    ingest_job.run(config, str(tmp_path / "a_file" / "out"), IN_PROCESS)


@pytest.mark.parametrize("content,eval_days,message", [
    (b"", 1, r"no train and no eval examples \(rows_read=7, rows_rejected=0, impressions=0"),
    (IMPRESSION_HEADER.encode() + b"\n", 1, "no train and no eval examples"),
    (b"garbage;;\n\x00\x01\n%%%\n", 1, r"no train and no eval examples \(rows_read=10, rows_rejected=3"),
    (_impression_bytes(GOOD_IMPRESSIONS), 5, r"no train examples .*eval_days=5"),
])
def test_zero_output_is_an_error_unless_allowed(tmp_path, content, eval_days, message):
  config = dataclasses.replace(
      _small_impressions(tmp_path / "raw", content), eval_days=eval_days)
  with pytest.raises(ingest_summary.EmptySplitError, match=message):
    ingest_job.run(config, str(tmp_path / "out"), IN_PROCESS)
  assert not (tmp_path / "out").exists()


def test_volume_problems_flag_an_eval_day_far_below_the_earlier_days():
  days = {f"2026-10-{d}": {"behaviors": 100, "impressions": n, "examples": n}
          for d, n in (("25", 0), ("26", 90), ("27", 110), ("28", 100), ("29", 52))}
  eval_start = 1_793_232_000  # 2026-10-29
  problems = ingest_summary.volume_problems(days, eval_start, 0.7)
  # The day before the log began (0) is no reference: the median is 100.
  assert problems == [
      "2026-10-29: 52 impressions, 52% of the median 100 of 3 earlier day(s) (min_volume_ratio 0.7)",
      "2026-10-29: 52 examples, 52% of the median 100 of 3 earlier day(s) (min_volume_ratio 0.7)",
  ]
  assert ingest_summary.volume_problems(days, eval_start, 0.5) == []
  assert ingest_summary.volume_problems(days, eval_start, 0.0) == []
  assert ingest_summary.volume_problems(days, None, 0.7) == []
  with pytest.raises(ValueError, match="min_volume_ratio"):
    ingest_job.IngestionConfig(input_format="behavior", input_patterns=("x",), min_volume_ratio=1.5)


@pytest.mark.e2e
def test_cli_faults_end_in_one_line_errors_and_nothing_written(tmp_path):
  """A glob matching nothing, a bad --max_seq_len, a truncated .gz, a reused
  output_dir: exit 1 with one line on stderr, no traceback, no output; --help
  exits 0."""
  rows = [(1, 50 + i, 500, T0 + 5 + i, i % 2) for i in range(3000)] + list(GOOD_IMPRESSIONS)
  whole = gzip.compress(_impression_bytes(rows))
  config = _small_impressions(tmp_path / "raw", whole[: len(whole) // 2], "imp.csv.gz")
  env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2",
             PYTHONPATH=os.getcwd())
  out = tmp_path / "out"

  def cli(*args, inputs=config.input_patterns[0]):
    return subprocess.run(
        [sys.executable, "-m", "preprocessing.build_examples", f"--input={inputs}",
         "--input_format=impressions", f"--behavior_log={config.behavior_patterns[0]}",
         f"--output_dir={out}", "--min_history=0", f"--max_timestamp={MAX_TS}", *args],
        capture_output=True, text=True, timeout=300, env=env)

  def error_line(proc):
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [l for l in proc.stderr.splitlines() if l.startswith("build_examples: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert not out.exists() or os.listdir(out) == ["keep"]
    return errors[0]

  assert "no file matches" in error_line(cli(inputs=str(tmp_path / "nothing*.csv")))
  assert "max_seq_len" in error_line(cli("--max_seq_len=0"))
  line = error_line(cli("--max_seq_len=2"))
  assert "imp.csv.gz" in line and "could not be read whole" in line and "EOFError" in line
  out.mkdir()
  (out / "keep").write_text("an earlier run")
  assert "not empty; pass --overwrite" in error_line(cli("--max_seq_len=2"))
  assert sorted(os.listdir(tmp_path)) == ["out", "raw"]  # no staging left
  helped = cli("--help")
  assert helped.returncode == 0 and "--overwrite" in helped.stdout + helped.stderr
