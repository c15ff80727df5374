"""Offline metrics against sklearn and a hand-counted GAUC example."""

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from trainer import metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_and_log_loss_match_sklearn(seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, 500)
  # Coarse scores to create many ties.
  probabilities = np.round(rng.random(500) * 0.5 + 0.3 * labels, 1)
  assert metrics.auc(labels, probabilities) == pytest.approx(
      sk_metrics.roc_auc_score(labels, probabilities), abs=1e-12
  )
  clipped = np.clip(probabilities, 1e-7, 1 - 1e-7)
  assert metrics.log_loss(labels, probabilities) == pytest.approx(
      sk_metrics.log_loss(labels, clipped), abs=1e-12
  )


def test_gauc_hand_counted():
  # user 1: 4 impressions, positives {0.9, 0.4}, negatives {0.5, 0.1}:
  #   pairs (0.9>0.5, 0.9>0.1, 0.4<0.5, 0.4>0.1) -> 3/4.
  # user 2: 2 impressions, positive 0.2 ties negative 0.2 -> 1/2.
  # user 3: 3 impressions, all negative -> excluded.
  # user 4: 1 impression, positive -> excluded.
  # GAUC = (4 * 0.75 + 2 * 0.5) / 6 = 4/6.
  user_ids = [1, 1, 1, 1, 2, 2, 3, 3, 3, 4]
  labels = [1, 0, 1, 0, 1, 0, 0, 0, 0, 1]
  scores = [0.9, 0.5, 0.4, 0.1, 0.2, 0.2, 0.3, 0.8, 0.1, 0.6]
  value, users = metrics.gauc(labels, scores, user_ids)
  assert value == pytest.approx(4 / 6)
  assert users == 2


def test_gauc_equals_sklearn_per_user_weighted_mean():
  rng = np.random.default_rng(5)
  user_ids = rng.integers(0, 40, 2000)
  labels = rng.integers(0, 2, 2000)
  scores = rng.random(2000) + 0.2 * labels
  total, weight = 0.0, 0
  for user in np.unique(user_ids):
    rows = user_ids == user
    if labels[rows].min() != labels[rows].max():
      total += sk_metrics.roc_auc_score(labels[rows], scores[rows]) * rows.sum()
      weight += rows.sum()
  value, _ = metrics.gauc(labels, scores, user_ids)
  assert value == pytest.approx(total / weight, abs=1e-12)


def test_evaluate_keys_and_calibration():
  labels = np.array([1, 0, 0, 1, 0, 0])
  probabilities = np.array([0.8, 0.1, 0.3, 0.6, 0.2, 0.4])
  users = np.array([1, 1, 1, 2, 2, 2])
  result = metrics.evaluate(labels, probabilities, users)
  assert result["mean_label"] == pytest.approx(2 / 6)
  assert result["mean_prediction"] == pytest.approx(2.4 / 6)
  assert result["calibration"] == pytest.approx(2.4 / 2)
  assert result["auc"] == 1.0 and result["gauc"] == 1.0
  assert result["examples"] == 6 and result["gauc_users"] == 2


def test_bad_input_is_refused():
  with pytest.raises(ValueError, match="single class"):
    metrics.auc([1, 1], [0.2, 0.3])
  with pytest.raises(ValueError, match="differ in length"):
    metrics.auc([1, 0], [0.2])
  with pytest.raises(ValueError, match="0 or 1"):
    metrics.auc([2, 0], [0.2, 0.1])
  with pytest.raises(ValueError, match="NaN"):
    metrics.auc([1, 0], [np.nan, 0.1])
  with pytest.raises(ValueError, match="no examples"):
    metrics.log_loss([], [])
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    metrics.log_loss([1, 0], [1.5, 0.1])
  with pytest.raises(ValueError, match="no user"):
    metrics.gauc([1, 0], [0.2, 0.1], [1, 2])
