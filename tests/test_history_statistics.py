"""History statistics against a brute-force numpy count."""

import numpy as np
import pytest
import tensorflow as tf

from preprocessing import features
from preprocessing import transforms
from trainer.layers import history_statistics

G = features.TIME_GAP_BUCKETS


def brute_force(cand_item, cand_cat, items, cats, types, gaps, mask, short):
  """One candidate, one history row: the documented statistics, by loops."""
  length = len(items)
  out = []
  totals = []
  for whole, window in ((True, range(length)), (False, range(max(0, length - short), length))):
    for candidate, values in ((cand_item, items), (cand_cat, cats)):
      matches = [p for p in window if mask[p] and values[p] == candidate]
      out.append(np.log1p(len(matches)))
      for type_slot in (2, 3, 4):  # cart, fav, buy (code + 1)
        out.append(np.log1p(sum(1 for p in matches if types[p] == type_slot)))
      out.append((G - min(gaps[p] for p in matches)) / G if matches else 0.0)
      out.append(max(gaps[p] for p in matches) / G if matches else 0.0)
      if whole:
        totals.append(len(matches))
  real = int(np.sum(mask))
  out += [t / max(real, 1) for t in totals]
  return np.array(out)


def random_rows(seed, rows, length):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(0, length + 1, rows)
  lengths[0] = 0 if rows > 1 else length // 2  # an empty history
  lengths[-1] = length  # a full one
  mask = np.arange(length)[None] >= length - lengths[:, None]
  # Few distinct ids: many matches and ties; padding holds garbage that
  # must not count (even equal to the candidate).
  items = rng.integers(1, 6, (rows, length))
  cats = rng.integers(1, 3, (rows, length))
  types = rng.integers(1, 5, (rows, length))
  gaps = rng.integers(1, G, (rows, length))
  return items, cats, types, gaps, mask


@pytest.mark.parametrize("short", [1, 5, 40])
def test_batch_rows_equal_brute_force(short):
  rows, length = 30, 24
  items, cats, types, gaps, mask = random_rows(short, rows, length)
  rng = np.random.default_rng(100 + short)
  cand_items = rng.integers(1, 7, rows)
  cand_cats = rng.integers(1, 4, rows)
  got = history_statistics.history_statistics(
      {features.ITEM_ID.name: tf.constant(cand_items[:, None], tf.int64),
       features.CATEGORY_ID.name: tf.constant(cand_cats[:, None], tf.int64)},
      {features.HIST_ITEM_IDS.name: tf.constant(items, tf.int64),
       features.HIST_CATEGORY_IDS.name: tf.constant(cats, tf.int64),
       features.HIST_BEHAVIOR_TYPES.name: tf.constant(types, tf.int64),
       transforms.HIST_TIME_GAP_BUCKETS: tf.constant(gaps, tf.int64)},
      tf.constant(mask), short,
  ).numpy()
  assert got.shape == (rows, 1, history_statistics.num_statistics())
  for row in range(rows):
    want = brute_force(cand_items[row], cand_cats[row], items[row], cats[row], types[row],
                       gaps[row], mask[row], short)
    np.testing.assert_allclose(got[row, 0], want, rtol=1e-6, atol=1e-6, err_msg=str(row))
  assert np.all(got[0] == 0)  # empty history: no match anywhere
  assert got[:, 0, 0].max() > 1  # some candidates match several times


def test_many_candidates_on_one_row_equal_one_at_a_time():
  items, cats, types, gaps, mask = random_rows(7, 1, 50)
  cand_items = np.arange(0, 8)
  cand_cats = np.arange(0, 8) % 3
  got = history_statistics.history_statistics(
      {features.ITEM_ID.name: tf.constant(cand_items[None], tf.int64),
       features.CATEGORY_ID.name: tf.constant(cand_cats[None], tf.int64)},
      {features.HIST_ITEM_IDS.name: tf.constant(items, tf.int64),
       features.HIST_CATEGORY_IDS.name: tf.constant(cats, tf.int64),
       features.HIST_BEHAVIOR_TYPES.name: tf.constant(types, tf.int64),
       transforms.HIST_TIME_GAP_BUCKETS: tf.constant(gaps, tf.int64)},
      tf.constant(mask), 10,
  ).numpy()[0]
  for n in range(len(cand_items)):
    want = brute_force(cand_items[n], cand_cats[n], items[0], cats[0], types[0], gaps[0],
                       mask[0], 10)
    np.testing.assert_allclose(got[n], want, rtol=1e-6, atol=1e-6)
