"""Offline CTR metrics in numpy: AUC, GAUC, log loss, calibration.

GAUC (as in DIN, arXiv 1706.06978): the per-user AUC averaged over users,
weighted by each user's number of impressions, counting only users with both
a click and a non-click (AUC is undefined otherwise). Ties in the
predictions count one half (the Mann-Whitney statistic), the same as
sklearn's `roc_auc_score`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

LOG_LOSS_EPSILON = 1e-7


def _check(labels, predictions, name: str = "predictions"):
  labels = np.asarray(labels)
  predictions = np.asarray(predictions, dtype=np.float64)
  if labels.ndim != 1 or predictions.ndim != 1:
    labels, predictions = labels.reshape(-1), predictions.reshape(-1)
  if labels.shape != predictions.shape:
    raise ValueError(
        f"labels ({labels.shape[0]}) and {name} ({predictions.shape[0]}) differ in length"
    )
  if labels.size == 0:
    raise ValueError("no examples to evaluate")
  if not np.all((labels == 0) | (labels == 1)):
    raise ValueError("labels must be 0 or 1")
  if not np.all(np.isfinite(predictions)):
    raise ValueError(f"{name} contain NaN or infinity")
  return labels.astype(np.int64), predictions


def _average_ranks(values: np.ndarray) -> np.ndarray:
  """1-based ranks, ties sharing their average rank."""
  order = np.argsort(values, kind="mergesort")
  sorted_values = values[order]
  # Start of each run of equal values.
  starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
  ends = np.r_[starts[1:], sorted_values.size]
  run_ranks = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
  ranks = np.empty(values.size, dtype=np.float64)
  ranks[order] = np.repeat(run_ranks, ends - starts)
  return ranks


def _auc_unchecked(labels: np.ndarray, scores: np.ndarray) -> Optional[float]:
  positives = int(labels.sum())
  negatives = labels.size - positives
  if positives == 0 or negatives == 0:
    return None
  rank_sum = _average_ranks(scores)[labels == 1].sum()
  return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def auc(labels, scores) -> float:
  """Area under the ROC curve; raises ValueError if only one class is present."""
  labels, scores = _check(labels, scores, "scores")
  value = _auc_unchecked(labels, scores)
  if value is None:
    raise ValueError("AUC is undefined: labels hold a single class")
  return value


def gauc(labels, scores, user_ids) -> tuple[float, int]:
  """Impression-weighted mean per-user AUC.

  Returns:
    (gauc, number of users that had both labels and so counted).

  Raises:
    ValueError: no user has both a click and a non-click, or bad input.
  """
  labels, scores = _check(labels, scores, "scores")
  user_ids = np.asarray(user_ids).reshape(-1)
  if user_ids.shape != labels.shape:
    raise ValueError("user_ids and labels differ in length")
  order = np.argsort(user_ids, kind="mergesort")
  sorted_users = user_ids[order]
  starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
  ends = np.r_[starts[1:], sorted_users.size]
  weighted_sum = 0.0
  weight = 0
  users = 0
  for start, end in zip(starts, ends):
    rows = order[start:end]
    value = _auc_unchecked(labels[rows], scores[rows])
    if value is None:
      continue
    weighted_sum += value * rows.size
    weight += rows.size
    users += 1
  if users == 0:
    raise ValueError("GAUC is undefined: no user has both a click and a non-click")
  return weighted_sum / weight, users


def log_loss(labels, probabilities) -> float:
  """Mean binary cross-entropy, probabilities clipped to [eps, 1 - eps]."""
  labels, probabilities = _check(labels, probabilities, "probabilities")
  if np.any((probabilities < 0) | (probabilities > 1)):
    raise ValueError("probabilities must lie in [0, 1]")
  p = np.clip(probabilities, LOG_LOSS_EPSILON, 1 - LOG_LOSS_EPSILON)
  return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def evaluate(labels, probabilities, user_ids) -> dict[str, float]:
  """Every metric at once.

  Returns:
    dict with auc, gauc, gauc_users, logloss, mean_prediction, mean_label,
    calibration (mean prediction / mean label; inf when there is no click),
    examples.
  """
  labels, probabilities = _check(labels, probabilities, "probabilities")
  gauc_value, gauc_users = gauc(labels, probabilities, user_ids)
  mean_prediction = float(probabilities.mean())
  mean_label = float(labels.mean())
  return {
      "auc": auc(labels, probabilities),
      "gauc": gauc_value,
      "gauc_users": gauc_users,
      "logloss": log_loss(labels, probabilities),
      "mean_prediction": mean_prediction,
      "mean_label": mean_label,
      "calibration": mean_prediction / mean_label if mean_label > 0 else float("inf"),
      "examples": int(labels.size),
  }
