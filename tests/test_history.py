"""The one history rule (preprocessing/history.py), ingestion = serving.

The unit tests check the rule against a brute-force scan written from its
definition. The property test runs the real ingestion (the Beam job that
reads files, validates rows and builds tf.Examples) on small random logs and
checks that the serving client builds, from the same log files, the history
of every example: same-second ties, rejected rows, max_seq_len cuts and
several users.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from preprocessing import features
from preprocessing import history
from preprocessing import ingest_parse
from preprocessing.ingest_parse import Behavior

DAY = 86_400
T0 = 1_793_404_800  # 2026-10-31 00:00:00 UTC
BOUNDS = ingest_parse.TimestampBounds(ingest_parse.DEFAULT_MIN_TIMESTAMP, T0 + 30 * DAY)


def brute_force(behaviors, user_id, request_timestamp, max_seq_len):
  """The rule as written: filter, order by the 4-tuple key, keep the tail."""
  earlier = sorted(
      (b.timestamp, b.item_id, b.category_id, b.behavior_type)
      for b in behaviors
      if b.user_id == user_id and b.timestamp < request_timestamp
  )
  return earlier[max(0, len(earlier) - max_seq_len):]


def test_same_second_ties_and_the_cut_follow_the_sort_key():
  behaviors = [
      Behavior(1, 10, 100, 0, T0 + 5),
      Behavior(1, 11, 101, 1, T0 + 5),
      Behavior(1, 9, 100, 3, T0 + 5),   # smaller item: first of the second
      Behavior(1, 9, 99, 2, T0 + 5),    # same item, smaller category: before it
      Behavior(1, 9, 99, 1, T0 + 5),    # same item and category, smaller type
      Behavior(1, 12, 102, 0, T0 + 10),  # the request's second: excluded
      Behavior(2, 1, 1, 0, T0),          # another user
  ]
  got = history.user_history(behaviors, 1, T0 + 10, max_seq_len=10)
  assert got.tolist() == [
      [T0 + 5, 9, 99, 1], [T0 + 5, 9, 99, 2], [T0 + 5, 9, 100, 3],
      [T0 + 5, 10, 100, 0], [T0 + 5, 11, 101, 1],
  ]
  assert history.user_history(behaviors, 1, T0 + 10, 2).tolist() == [
      [T0 + 5, 10, 100, 0], [T0 + 5, 11, 101, 1]]
  assert history.user_history(behaviors, 1, T0 + 5, 8).shape == (0, 4)
  assert history.user_history(behaviors, 3, T0 + 99, 8).shape == (0, 4)
  assert history.user_history(behaviors, 1, T0 + 11, 1).tolist() == [
      [T0 + 10, 12, 102, 0]]


@pytest.mark.parametrize("seed", range(5))
def test_user_history_matches_brute_force_on_random_logs(seed):
  rng = random.Random(seed)
  stamps = [T0 + rng.randrange(50) for _ in range(12)]  # few seconds: ties
  behaviors = [
      Behavior(rng.randrange(3), rng.randrange(6), rng.randrange(3),
               rng.randrange(4), rng.choice(stamps))
      for _ in range(rng.randrange(0, 80))
  ]
  for _ in range(30):
    user, t = rng.randrange(4), rng.choice(stamps) + rng.choice((0, 1))
    max_seq_len = rng.choice((1, 2, 5, 1000))
    got = history.user_history(rng.sample(behaviors, len(behaviors)), user, t,
                               max_seq_len)
    assert [tuple(r) for r in got.tolist()] == brute_force(
        behaviors, user, t, max_seq_len)


def test_window_bounds_count_only_earlier_behaviours():
  stamps = np.array([5, 5, 7, 9, 9, 9], np.int64)
  starts, ends = history.window_bounds(stamps, np.array([5, 6, 9, 10, 0]), 2)
  assert ends.tolist() == [0, 2, 3, 6, 0]
  assert starts.tolist() == [0, 0, 1, 4, 0]


def test_parse_behavior_line_is_ingestions_parsing():
  good = history.parse_behavior_line(f"1,2,3,cart,{T0}", "f", BOUNDS)
  assert good == Behavior(1, 2, 3, 1, T0)
  for line, reason in (
      ("1,2,3,pv,0", ingest_parse.BAD_TIMESTAMP),
      (f"1,2,3,click,{T0}", ingest_parse.UNKNOWN_BEHAVIOR_TYPE),
      (b"1,2\xff,3,pv,1", ingest_parse.BAD_ENCODING),
      ("", ingest_parse.EMPTY_LINE),
  ):
    reject = history.parse_behavior_line(line, "f", BOUNDS)
    assert isinstance(reject, ingest_parse.Reject) and reject.reason == reason
    assert reject == ingest_parse.parse_line(line, "f", ingest_parse.BEHAVIOR_ROWS, BOUNDS)


def test_rank_behavior_types_default_to_pv():
  pv = features.BEHAVIOR_TYPES.index("pv")
  assert history.rank_behavior_types(None, 3) == [pv] * 3
  assert history.rank_behavior_types([], 2) == [pv] * 2
  assert history.rank_behavior_types([], 0) == []
  assert history.rank_behavior_types([3, 1], 2) == [3, 1]
  assert history.rank_behavior_types(
      [ingest_parse.NO_BEHAVIOR_TYPE] * 2, 2) == [pv] * 2


def test_max_seq_len_is_checked():
  for bad in (0, features.MAX_SUPPORTED_SEQ_LEN + 1, 2.0, True):
    with pytest.raises(ValueError, match="max_seq_len"):
      history.user_history([], 1, T0, bad)


# ---------------------------------------------------------------------------
# Property: the serving client's history equals the ingestion's.

# Rows that ingestion rejects, for the users the histories are built for; a
# client that kept any of them would send a different history.
_BAD_ROWS = (
    "{u},{i},{c},pv,0",                     # timestamp 0
    "{u},{i},{c},cart,{t}000",              # milliseconds
    "{u},{i},{c},click,{t}",                # unknown type
    "{u},x{i},{c},pv,{t}",                  # non-numeric id
    "{u},{i},{c},pv",                       # a column short
    "{u},-{i},{c},fav,{t}",                 # negative id
    "",                                     # blank line
    "{u},{i}\xff,{c},buy,{t}",              # not UTF-8 (written as latin-1)
)


def random_log(seed, users):
  """(behaviour log bytes, impression log text) for `users`: behaviours on
  few distinct seconds (same-second ties), impressions on those seconds and
  next to them, about one row in eight rejected by ingestion."""
  rng = random.Random(seed)
  seconds = sorted(T0 + rng.randrange(3 * DAY) for _ in range(8))
  lines = []
  for _ in range(rng.randrange(20, 60)):
    u, i, c = rng.choice(users), rng.randrange(1, 7), rng.randrange(1, 3)
    t = rng.choice(seconds)
    if rng.random() < 0.12:
      line = rng.choice(_BAD_ROWS).format(u=u, i=i, c=c, t=t)
    else:
      line = f"{u},{i},{c},{rng.choice(features.BEHAVIOR_TYPES)},{t}"
    lines.append(line + rng.choice(("\n", "\n", "\r\n")))
  impressions = ["user_id,item_id,category_id,timestamp,clicked\n"]
  for _ in range(12):
    t = rng.choice(seconds) + rng.choice((0, 0, 1, 3600))
    impressions.append(f"{rng.choice(users)},{rng.randrange(1, 9)},1,{t},"
                       f"{rng.randrange(2)}\n")
  return "".join(lines).encode("latin-1"), "".join(impressions)


# Issue 9's rows: the old client sent [111, 9, 5]; ingestion, with
# max_seq_len 2 as below, [5, 9] (timestamp 0 rejected, ties by item).
_ISSUE_ROWS = b"1,111,7,pv,0\n1,9,7,pv,1793400000\n1,5,7,pv,1793400000\n"
_ISSUE_IMPRESSIONS = "user_id,item_id,category_id,timestamp,clicked\n1,3,7,1793491200,1\n"
LOGS = 5
MAX_SEQ_LEN = 2  # short, so many histories are cut, some inside a tie


def run_ingestion(tmp_path, max_seq_len):
  """The real ingestion job in-process over tmp_path/{behaviors,impressions}
  -> (examples, rejects)."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from preprocessing import ingest_job  # pylint: disable=g-import-not-at-top

  config = ingest_job.IngestionConfig(
      input_format="impressions",
      input_patterns=(str(tmp_path / "impressions" / "*.csv"),),
      behavior_patterns=(str(tmp_path / "behaviors" / "*.csv"),),
      max_seq_len=max_seq_len, min_history=0, eval_days=1,
      max_timestamp=BOUNDS.max_timestamp)
  out = tmp_path / "out"
  with beam.Pipeline() as p:
    outputs = ingest_job.expand_ingestion(p, config)
    examples = (outputs.train, outputs.eval) | beam.Flatten() | beam.Map(
        lambda e: json.dumps(_history_of_example(e)))
    examples | "WriteExamples" >> beam.io.WriteToText(str(out / "examples"))
    outputs.rejects | beam.Map(lambda r: r.to_json()) | (
        "WriteRejects" >> beam.io.WriteToText(str(out / "rejects")))
  read = lambda prefix: [json.loads(line) for path in out.glob(f"{prefix}*")
                         for line in path.read_text().splitlines()]
  return read("examples"), read("rejects")


def _history_of_example(serialized):
  from tensorflow.core.example import example_pb2  # pylint: disable=g-import-not-at-top

  feature = example_pb2.Example.FromString(serialized).features.feature
  values = lambda name: list(feature[name].int64_list.value)
  return {
      "user_id": values(features.USER_ID.name)[0],
      "timestamp": values(features.TIMESTAMP.name)[0],
      "history": [values(f.name) for f in features.RANK_HISTORY_FEATURES],
  }


def test_client_history_equals_ingestion_history(tmp_path):
  """Five random logs (three users each) and issue 9's rows, as files of one
  ingestion run (one Beam job keeps it fast); every example's history is
  rebuilt by the client from the same files."""
  from serving import requests  # pylint: disable=g-import-not-at-top

  for directory in ("behaviors", "impressions"):
    (tmp_path / directory).mkdir()
  for seed in range(LOGS):
    users = [10 * (seed + 1) + k for k in range(3)]
    behaviour_log, impression_log = random_log(seed, users)
    (tmp_path / "behaviors" / f"log{seed}.csv").write_bytes(behaviour_log)
    (tmp_path / "impressions" / f"log{seed}.csv").write_text(impression_log)
  (tmp_path / "behaviors" / "issue.csv").write_bytes(_ISSUE_ROWS)
  (tmp_path / "impressions" / "issue.csv").write_text(_ISSUE_IMPRESSIONS)
  examples, rejects = run_ingestion(tmp_path, MAX_SEQ_LEN)
  assert len(examples) == 12 * LOGS + 1  # min_history=0: one per impression
  assert rejects  # the logs hold rows that ingestion rejects
  pattern = str(tmp_path / "behaviors" / "*.csv")
  cut = 0
  for example in examples:
    rejected = []
    got = requests.history_from_log(
        pattern, example["user_id"], example["timestamp"], MAX_SEQ_LEN,
        bounds=BOUNDS, rejected=rejected)
    assert list(got) == example["history"], example
    cut += len(example["history"][0]) == MAX_SEQ_LEN
    # The client skips exactly the rows ingestion rejected, for the same reasons.
    assert sorted(r.reason for r in rejected) == sorted(
        r["reason"] for r in rejects)
    if example["user_id"] == 1:
      assert example["history"][0] == [5, 9]
  assert cut >= 10  # the max_seq_len cut is exercised, not only short histories
