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
from preprocessing import raw_logs
from preprocessing.raw_logs import Behavior

DAY = 86_400
T0 = 1_793_404_800  # 2026-10-31 00:00:00 UTC
BOUNDS = raw_logs.TimestampBounds(raw_logs.DEFAULT_MIN_TIMESTAMP, T0 + 30 * DAY)


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
      ("1,2,3,pv,0", raw_logs.BAD_TIMESTAMP),
      (f"1,2,3,click,{T0}", raw_logs.UNKNOWN_BEHAVIOR_TYPE),
      (b"1,2\xff,3,pv,1", raw_logs.BAD_ENCODING),
      ("", raw_logs.EMPTY_LINE),
  ):
    reject = history.parse_behavior_line(line, "f", BOUNDS)
    assert isinstance(reject, raw_logs.Reject) and reject.reason == reason
    assert reject == raw_logs.parse_line(line, "f", raw_logs.BEHAVIOR_ROWS, BOUNDS)


def test_rank_behavior_types_default_to_pv():
  pv = features.BEHAVIOR_TYPES.index("pv")
  assert history.rank_behavior_types(None, 3) == [pv] * 3
  assert history.rank_behavior_types([], 2) == [pv] * 2
  assert history.rank_behavior_types([], 0) == []
  assert history.rank_behavior_types([3, 1], 2) == [3, 1]
  assert history.rank_behavior_types(
      [raw_logs.NO_BEHAVIOR_TYPE] * 2, 2) == [pv] * 2


def test_max_seq_len_is_checked():
  for bad in (0, features.MAX_SUPPORTED_SEQ_LEN + 1, 2.0, True):
    with pytest.raises(ValueError, match="max_seq_len"):
      history.user_history([], 1, T0, bad)
