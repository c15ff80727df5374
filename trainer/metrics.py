"""Offline CTR metrics in numpy: AUC, GAUC, log loss, calibration.

AUC and GAUC are `preprocessing.auc`'s (ties count one half, as sklearn's
`roc_auc_score`; GAUC as in DIN, impression-weighted over the users with both
a click and a non-click); this module checks the inputs first.
"""

from __future__ import annotations

import numpy as np

from preprocessing import auc as auc_lib

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


def auc(labels, scores) -> float:
  """Area under the ROC curve; raises ValueError if only one class is present."""
  labels, scores = _check(labels, scores, "scores")
  return auc_lib.auc(labels, scores)


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
  value, users = auc_lib.gauc(labels, scores, user_ids)
  if value is None:
    raise ValueError("GAUC is undefined: no user has both a click and a non-click")
  return value, users


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
