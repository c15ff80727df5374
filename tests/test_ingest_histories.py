"""BuildExamples and SampleNegatives against brute-force recomputations.

Every expected example is recomputed here from the raw events by scanning the
whole log per impression (no sorting tricks, no chunks), so the chunked Beam
walk is checked against an independent reference. Beam runs in-process.
"""

import hashlib
import json
import random
import struct

import apache_beam as beam
import numpy as np
import pytest

from preprocessing import features
from preprocessing import ingest_histories
from preprocessing.ingest_parse import Behavior, Impression
from preprocessing.ingest_histories import SequenceConfig

DAY = 86_400
T0 = 1_700_000_000 - 1_700_000_000 % DAY  # a UTC midnight


def brute_force(behaviors, impressions, config):
  """{(split, example tuple)} recomputed by scanning the log per impression."""
  window = [
      i for i in impressions
      if (config.impression_start_timestamp is None
          or i.timestamp >= config.impression_start_timestamp)
      and (config.impression_end_timestamp is None
           or i.timestamp < config.impression_end_timestamp)
  ]
  if not window:
    return set()
  if config.eval_start_timestamp is not None:
    eval_start = config.eval_start_timestamp
  else:
    latest_day = max(i.timestamp for i in window) // DAY
    eval_start = (latest_day - config.eval_days + 1) * DAY
  out = set()
  for imp in window:
    earlier = [
        b for b in behaviors
        if b.user_id == imp.user_id and b.timestamp < imp.timestamp
    ]
    if len(earlier) < config.min_history:
      continue
    earlier.sort(key=lambda b: (b.timestamp, b.item_id, b.category_id, b.behavior_type))
    hist = earlier[len(earlier) - config.max_seq_len:] if len(earlier) > config.max_seq_len else earlier
    split = "eval" if imp.timestamp >= eval_start else "train"
    out.add((split, (
        imp.user_id, imp.item_id, imp.category_id, imp.timestamp, imp.label,
        tuple(b.item_id for b in hist), tuple(b.category_id for b in hist),
        tuple(b.timestamp for b in hist),
        tuple(b.behavior_type for b in hist) if config.with_behavior_types else None,
    )))
  return out


def parse_example(serialized):
  import tensorflow as tf

  f = tf.train.Example.FromString(serialized).features.feature
  ints = lambda name: tuple(f[name].int64_list.value)
  types = (
      ints(features.HIST_BEHAVIOR_TYPES.name)
      if features.HIST_BEHAVIOR_TYPES.name in f else None
  )
  return (
      ints("user_id")[0], ints("item_id")[0], ints("category_id")[0],
      ints("timestamp")[0], ints("label")[0], ints("hist_item_ids"),
      ints("hist_category_ids"), ints("hist_timestamps"), types,
  )


def run_build(tmp_path, behaviors, impressions, config):
  """Runs BuildExamples in-process; returns ({(split, example)}, stats)."""
  out = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
  with beam.Pipeline() as p:
    built = {
        "behaviors": p | "B" >> beam.Create(behaviors),
        "impressions": p | "I" >> beam.Create(impressions),
    } | ingest_histories.BuildExamples(config)
    tagged = (
        built["train"] | "T" >> beam.Map(lambda e: json.dumps(["train", parse_example(e)])),
        built["eval"] | "E" >> beam.Map(lambda e: json.dumps(["eval", parse_example(e)])),
    ) | beam.Flatten()
    tagged | "WE" >> beam.io.WriteToText(str(out / "examples"))
    (built["stats"] | beam.CombinePerKey(sum) | beam.Map(json.dumps)
     | "WS" >> beam.io.WriteToText(str(out / "stats")))
  examples, stats = set(), {}
  for path in out.glob("examples*"):
    for line in path.read_text().splitlines():
      split, ex = json.loads(line)
      ex[5:8] = [tuple(v) for v in ex[5:8]]
      ex[8] = tuple(ex[8]) if ex[8] is not None else None
      examples.add((split, tuple(ex)))
  for path in out.glob("stats*"):
    for line in path.read_text().splitlines():
      name, count = json.loads(line)
      stats[name] = count
  return examples, stats


# A hand-made log with ties: behaviours sharing a second with each other and
# with impressions, across a day boundary.
TIE_BEHAVIORS = [
    Behavior(1, 10, 100, 0, T0 + 5),
    Behavior(1, 11, 101, 1, T0 + 5),   # same second as the one above
    Behavior(1, 9, 100, 3, T0 + 5),    # same second, smaller item: sorts first
    Behavior(1, 12, 102, 0, T0 + 10),  # same second as an impression
    Behavior(1, 13, 103, 2, T0 + DAY + 1),
    Behavior(2, 20, 200, 0, T0 + 3),
    Behavior(2, 21, 200, 0, T0 + 2 * DAY),
    Behavior(3, 30, 300, 0, T0 + 7),   # user 3 has no impressions
]
TIE_IMPRESSIONS = [
    Impression(1, 50, 500, T0 + 5, 1),    # history: none (ties excluded)
    Impression(1, 51, 501, T0 + 10, 0),   # 3 behaviours at T0+5, not T0+10
    Impression(1, 52, 502, T0 + 11, 1),   # includes T0+10
    Impression(1, 53, 503, T0 + DAY + 1, 0),
    Impression(1, 54, 504, T0 + 3 * DAY, 1),
    Impression(2, 60, 600, T0 + 2 * DAY, 1),  # tie with its only later behaviour
    Impression(4, 70, 700, T0 + 2 * DAY, 0),  # user without behaviours
]


def test_hand_counted_histories_with_ties(tmp_path):
  config = SequenceConfig(max_seq_len=3, min_history=0, eval_days=1)
  got, stats = run_build(tmp_path, TIE_BEHAVIORS, TIE_IMPRESSIONS, config)
  by_item = {ex[1]: (split, ex) for split, ex in got}
  assert by_item[50][1][5] == ()
  assert by_item[51][1][5:9] == ((9, 10, 11), (100, 100, 101), (T0 + 5,) * 3, (3, 0, 1))
  assert by_item[52][1][5] == (10, 11, 12)        # truncated to 3, oldest first
  assert by_item[53][1][5] == (10, 11, 12)        # T0+DAY+1 itself excluded
  assert by_item[54][1][5] == (11, 12, 13)
  assert by_item[60][1][5] == (20,)               # T0+2*DAY excluded
  assert by_item[70][1][5] == ()
  assert {item for item, (split, _) in by_item.items() if split == "eval"} == {54}
  assert stats["examples_train"] == 6 and stats["examples_eval"] == 1
  assert stats["impressions"] == 7


@pytest.mark.parametrize("chunk_seconds,max_seq_len,min_history", [
    (DAY, 3, 0), (1, 1, 1), (6, 20, 2)])
def test_tie_log_matches_brute_force(tmp_path, chunk_seconds, max_seq_len, min_history):
  config = SequenceConfig(
      max_seq_len=max_seq_len, min_history=min_history,
      chunk_seconds=chunk_seconds,
  )
  got, stats = run_build(tmp_path, TIE_BEHAVIORS, TIE_IMPRESSIONS, config)
  want = brute_force(TIE_BEHAVIORS, TIE_IMPRESSIONS, config)
  assert got == want
  assert stats.get("impressions_below_min_history", 0) == len(TIE_IMPRESSIONS) - len(want)


def random_log(seed, users=6, behaviors=400, impressions=150, days=5, spread=DAY):
  """Random events on few distinct seconds, so ties are frequent."""
  rng = random.Random(seed)
  stamps = [T0 + rng.randrange(days) * DAY + rng.randrange(0, spread, max(1, spread // 40))
            for _ in range(60)]
  bs = [Behavior(rng.randrange(users), rng.randrange(30), rng.randrange(5),
                 rng.randrange(4), rng.choice(stamps)) for _ in range(behaviors)]
  imps = [Impression(rng.randrange(users), rng.randrange(30), rng.randrange(5),
                     rng.choice(stamps), rng.randrange(2)) for _ in range(impressions)]
  return bs, imps


@pytest.mark.parametrize("config", [
    SequenceConfig(max_seq_len=5, min_history=0, eval_days=1),
    SequenceConfig(max_seq_len=16, min_history=3, eval_days=2, chunk_seconds=3600),
    SequenceConfig(max_seq_len=1024, min_history=1, eval_days=1, chunk_seconds=7 * DAY),
    SequenceConfig(max_seq_len=4, min_history=1, with_behavior_types=False,
                   eval_start_timestamp=T0 + 3 * DAY + 100,
                   impression_start_timestamp=T0 + DAY,
                   impression_end_timestamp=T0 + 4 * DAY),
])
def test_random_logs_match_brute_force(tmp_path, config):
  behaviors, impressions = random_log(seed=config.max_seq_len)
  got, stats = run_build(tmp_path, behaviors, impressions, config)
  want = brute_force(behaviors, impressions, config)
  assert len(want) > 20
  assert got == want
  # No leakage: every history timestamp strictly before its impression.
  for _, ex in got:
    assert all(t < ex[3] for t in ex[7])
    assert list(ex[7]) == sorted(ex[7])
  # Time split: every eval impression is later than every train impression.
  train = [ex[3] for split, ex in got if split == "train"]
  evals = [ex[3] for split, ex in got if split == "eval"]
  assert train and evals and max(train) < min(evals)
  outside = stats.get("impressions_outside_window", 0)
  assert stats["impressions"] + outside == len(impressions)


def test_truncation_keeps_the_most_recent_oldest_first(tmp_path):
  behaviors = [Behavior(1, 1000 + k, 7, 0, T0 + 60 * k) for k in range(300)]
  impressions = [Impression(1, 5, 5, T0 + 60 * 250 + 1, 1),
                 Impression(1, 6, 6, T0 + 60 * 4, 0)]
  got, _ = run_build(tmp_path, behaviors, impressions,
                     SequenceConfig(max_seq_len=8, chunk_seconds=600))
  hist = {ex[1]: ex[5] for _, ex in got}
  assert hist[5] == tuple(range(1000 + 243, 1000 + 251))
  assert hist[6] == (1000, 1001, 1002, 1003)


def test_heavy_user_spread_over_chunks_matches_brute_force(tmp_path):
  """One user with 6,000 behaviours over 30 days, split into hourly chunks."""
  rng = random.Random(7)
  behaviors = [Behavior(9, rng.randrange(500), rng.randrange(9), rng.randrange(4),
                        T0 + rng.randrange(30 * DAY)) for _ in range(6000)]
  behaviors += [Behavior(8, 1, 1, 0, T0 + 5)]
  impressions = [Impression(9, rng.randrange(500), 1, T0 + rng.randrange(30 * DAY), 1)
                 for _ in range(150)]
  config = SequenceConfig(max_seq_len=200, chunk_seconds=3600)
  got, _ = run_build(tmp_path, behaviors, impressions, config)
  assert got == brute_force(behaviors, impressions, config)


def test_the_longest_supported_history(tmp_path):
  """max_seq_len 10,000 over 12,000 behaviours: truncation at full length."""
  behaviors = [Behavior(1, k, k % 13, k % 4, T0 + 7 * k) for k in range(12_000)]
  impressions = [Impression(1, 3, 3, T0 + 7 * k + 1, k % 2)
                 for k in (5, 9_998, 9_999, 11_999)]
  config = SequenceConfig(max_seq_len=features.MAX_SUPPORTED_SEQ_LEN)
  got, _ = run_build(tmp_path, behaviors, impressions, config)
  assert got == brute_force(behaviors, impressions, config)
  lengths = sorted(len(ex[5]) for _, ex in got)
  assert lengths == [6, 9_999, 10_000, 10_000]


def test_same_input_gives_the_same_examples_whatever_the_order(tmp_path):
  behaviors, impressions = random_log(seed=3)
  config = SequenceConfig(max_seq_len=7)
  first, _ = run_build(tmp_path, behaviors, impressions, config)
  shuffled_b, shuffled_i = behaviors[::-1], impressions[:]
  random.Random(1).shuffle(shuffled_i)
  second, _ = run_build(tmp_path, shuffled_b, shuffled_i,
                        SequenceConfig(max_seq_len=7, chunk_seconds=1000))
  assert first == second


def test_config_rejects_bad_values():
  with pytest.raises(ValueError, match="max_seq_len"):
    SequenceConfig(max_seq_len=0)
  with pytest.raises(ValueError, match="max_seq_len"):
    SequenceConfig(max_seq_len=features.MAX_SUPPORTED_SEQ_LEN + 1)
  with pytest.raises(ValueError, match="min_history"):
    SequenceConfig(max_seq_len=4, min_history=5)
  with pytest.raises(TypeError, match="eval_days"):
    SequenceConfig(eval_days=1.5)
  with pytest.raises(TypeError):
    SequenceConfig(unknown_setting=1)
  assert SequenceConfig(max_seq_len=features.MAX_SUPPORTED_SEQ_LEN).max_seq_len == 10_000


def test_eval_start_is_the_start_of_the_last_eval_days():
  assert ingest_histories.eval_start_for(T0 + DAY + 5, 1) == T0 + DAY
  assert ingest_histories.eval_start_for(T0 + DAY, 2) == T0
  assert ingest_histories.eval_start_for(T0 + DAY - 1, 1) == T0


# ---------------------------------------------------------------------------
# Negative sampling.


def reference_negatives(catalogue, positive, neg_per_pos, seed):
  """The documented rule, re-implemented: uniform over the other items."""
  others = sorted(item for item in catalogue if item != positive.item_id)
  picks = []
  for draw in range(neg_per_pos):
    digest = hashlib.blake2b(
        struct.pack("<5q", seed, positive.user_id, positive.timestamp,
                    positive.item_id, draw), digest_size=8).digest()
    if others:
      picks.append(others[int.from_bytes(digest, "little") % len(others)])
  return picks


def run_sampling(tmp_path, positives, behaviors, neg_per_pos, seed):
  out = tmp_path / f"neg{len(list(tmp_path.iterdir()))}"
  with beam.Pipeline() as p:
    sampled = {
        "positives": p | "P" >> beam.Create(positives),
        "behaviors": p | "B" >> beam.Create(behaviors),
    } | ingest_histories.SampleNegatives(neg_per_pos, seed)
    sampled["impressions"] | beam.Map(lambda i: json.dumps(list(i))) | (
        "WI" >> beam.io.WriteToText(str(out / "imps")))
    sampled["stats"] | beam.Map(json.dumps) | "WS" >> beam.io.WriteToText(str(out / "stats"))
  imps = [Impression(*json.loads(l)) for f in out.glob("imps*") for l in f.read_text().splitlines()]
  stats = dict(json.loads(l) for f in out.glob("stats*") for l in f.read_text().splitlines())
  return imps, stats


def test_negatives_follow_the_seeded_rule_and_never_equal_the_positive(tmp_path):
  rng = random.Random(0)
  behaviors = [Behavior(rng.randrange(5), item, item % 7 + 100, 0, T0 + item)
               for item in range(40)]
  # Item 3 also appears with a larger category: the smallest wins.
  behaviors.append(Behavior(0, 3, 999, 1, T0))
  positives = [Impression(b.user_id, b.item_id, b.category_id, b.timestamp + 9, 1)
               for b in behaviors[:25]]
  catalogue = {b.item_id: min(c.category_id for c in behaviors if c.item_id == b.item_id)
               for b in behaviors}
  imps, stats = run_sampling(tmp_path, positives, behaviors, neg_per_pos=3, seed=11)
  want = set(positives)
  for pos in positives:
    for item in reference_negatives(catalogue, pos, 3, 11):
      want.add(Impression(pos.user_id, item, catalogue[item], pos.timestamp, 0))
  assert set(imps) == want
  assert len(imps) == 25 * 4  # duplicates would hide in the set comparison
  assert stats == {"negatives_sampled": 75}
  for neg in (i for i in imps if i.label == 0):
    positive = next(p for p in positives
                    if (p.user_id, p.timestamp) == (neg.user_id, neg.timestamp))
    assert neg.item_id != positive.item_id
  # A different seed draws different negatives.
  other, _ = run_sampling(tmp_path, positives, behaviors, neg_per_pos=3, seed=12)
  assert set(other) != set(imps)


def test_a_one_item_catalogue_has_no_negatives_and_says_so(tmp_path):
  behaviors = [Behavior(1, 5, 1, 0, T0)]
  positives = [Impression(1, 5, 1, T0 + 1, 1)]
  imps, stats = run_sampling(tmp_path, positives, behaviors, neg_per_pos=2, seed=0)
  assert imps == positives
  assert stats == {"negatives_unavailable": 1}


def test_sample_negative_items_is_uniform_over_the_other_items():
  items = np.arange(10, dtype=np.int64)
  counts = np.zeros(10, dtype=int)
  for t in range(3000):
    for index in ingest_histories.sample_negative_items(
        items, Impression(1, 4, 0, T0 + t, 1), 2, seed=5):
      counts[index] += 1
  assert counts[4] == 0
  others = np.delete(counts, 4)
  expected = 6000 / 9
  # Chi-square with 8 dof: 26.1 is the 0.1% quantile.
  assert ((others - expected) ** 2 / expected).sum() < 26.1


def test_sample_negatives_rejects_bad_settings():
  with pytest.raises(ValueError, match="neg_per_pos"):
    ingest_histories.SampleNegatives(-1, 0)
  with pytest.raises(ValueError, match="seed"):
    ingest_histories.SampleNegatives(1, -3)
