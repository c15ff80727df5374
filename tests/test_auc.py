"""The one AUC / GAUC implementation (preprocessing/auc.py) against sklearn
and hand-counted values."""

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from preprocessing import auc


def test_auc_or_none_against_sklearn_and_ties():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 50)
  scores = rng.integers(0, 5, 50) / 4.0  # many ties
  assert auc.auc_or_none(labels, scores) == pytest.approx(
      sk_metrics.roc_auc_score(labels, scores))
  assert auc.auc_or_none([1, 1], [0.2, 0.3]) is None
  # Hand-counted: pairs (pos 0.4 vs negs 0.1, 0.4, 0.9) -> 1 + 0.5 + 0 = 1.5 / 3.
  assert auc.auc_or_none([1, 0, 0, 0], [0.4, 0.1, 0.4, 0.9]) == pytest.approx(0.5)


@pytest.mark.parametrize("labels", [
    np.array([True, False, True, False]),
    np.array([1, 0, 1, 0]),
    np.array([[1.0], [0.0], [1.0], [0.0]], np.float32),  # TFMA's [n, 1] floats
])
def test_labels_may_be_bool_int_or_float(labels):
  assert auc.auc_or_none(labels, [0.9, 0.2, 0.1, 0.5]) == pytest.approx(0.5)


def test_average_ranks_share_ties():
  np.testing.assert_array_equal(
      auc.average_ranks(np.array([0.3, 0.1, 0.3, 0.2, 0.3])),
      [4.0, 1.0, 4.0, 2.0, 4.0])


def test_auc_names_the_classes_when_one_is_absent():
  with pytest.raises(ValueError, match=r"single class \(3 positives, 0 negatives\)"):
    auc.auc(np.ones(3), np.arange(3))
  with pytest.raises(ValueError, match="^got 0 and 2: more data$"):
    auc.auc([0, 0], [0.1, 0.2],
            single_class_message="got {positives} and {negatives}: more data")


def test_gauc_hand_counted_and_sums_merge():
  # user 1: 3/4 over 4 impressions; user 2: a tie, 1/2 over 2; user 3: only
  # non-clicks -> not counted. GAUC = (4 * 0.75 + 2 * 0.5) / 6.
  user_ids = [1, 1, 1, 1, 2, 2, 3, 3]
  labels = [1, 0, 1, 0, 1, 0, 0, 0]
  scores = [0.9, 0.5, 0.4, 0.1, 0.2, 0.2, 0.3, 0.8]
  assert auc.gauc(labels, scores, user_ids) == (pytest.approx(4 / 6), 2)
  first, second = auc.GroupAucSum(), auc.GroupAucSum()
  first.add_user(labels[:4], scores[:4])
  second.add_user(labels[4:6], scores[4:6])
  second.add_user(labels[6:], scores[6:])
  first.merge(second)
  assert (first.value(), first.users) == (pytest.approx(4 / 6), 2)
  assert auc.gauc([1, 1], [0.1, 0.2], [5, 6]) == (None, 0)
  assert auc.GroupAucSum().value() is None
