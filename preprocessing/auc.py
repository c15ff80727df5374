"""AUC and GAUC: the one implementation, in numpy.

AUC is the Mann-Whitney statistic: the share of (click, non-click) pairs in
which the click scores higher, ties counting one half (average ranks), the
same as sklearn's `roc_auc_score`. GAUC (as in DIN, arXiv 1706.06978) is the
per-user AUC averaged over users, weighted by each user's number of
impressions, counting only users with both a click and a non-click (AUC is
undefined otherwise).

The trainer's offline metrics (`trainer.metrics`), the Evaluator's GAUC
metric (`pipeline.gauc_metric`) and the synthetic generator's oracle use
these functions; numpy is all they import.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

SINGLE_CLASS_MESSAGE = (
    "AUC is undefined: labels hold a single class ({positives} positives, "
    "{negatives} negatives)")


def average_ranks(values: np.ndarray) -> np.ndarray:
  """1-based ranks of `values`, ties sharing their average rank."""
  order = np.argsort(values, kind="mergesort")
  sorted_values = values[order]
  # Start of each run of equal values.
  starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
  ends = np.r_[starts[1:], sorted_values.size]
  run_ranks = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
  ranks = np.empty(values.size, dtype=np.float64)
  ranks[order] = np.repeat(run_ranks, ends - starts)
  return ranks


def _clicks_and_scores(labels, scores) -> tuple[np.ndarray, np.ndarray]:
  # Labels are 0/1 (int, float or bool): a click is a label above 1/2.
  clicks = np.asarray(labels, dtype=np.float64).reshape(-1) > 0.5
  return clicks, np.asarray(scores, dtype=np.float64).reshape(-1)


def auc_or_none(labels, scores) -> Optional[float]:
  """AUC of 0/1 `labels` against `scores`; None when one class is absent."""
  clicks, scores = _clicks_and_scores(labels, scores)
  positives = int(clicks.sum())
  negatives = clicks.size - positives
  if positives == 0 or negatives == 0:
    return None
  rank_sum = average_ranks(scores)[clicks].sum()
  return float((rank_sum - positives * (positives + 1) / 2.0)
               / (positives * negatives))


def auc(labels, scores,
        single_class_message: str = SINGLE_CLASS_MESSAGE) -> float:
  """AUC of 0/1 `labels` against `scores`.

  Raises:
    ValueError: one class is absent; the message is `single_class_message`
      formatted with `positives` and `negatives`.
  """
  value = auc_or_none(labels, scores)
  if value is None:
    positives = int(_clicks_and_scores(labels, scores)[0].sum())
    raise ValueError(single_class_message.format(
        positives=positives, negatives=np.size(labels) - positives))
  return value


@dataclasses.dataclass
class GroupAucSum:
  """GAUC's running sums, fed one user at a time (`add_user`); sums of
  disjoint sets of users merge (`merge`), as a Beam combiner's do."""

  weighted_auc: float = 0.0
  weight: float = 0.0
  users: int = 0

  def add_user(self, labels, scores) -> None:
    """Adds one user's impressions; a user without both labels counts not."""
    value = auc_or_none(labels, scores)
    if value is not None:
      impressions = np.size(labels)
      self.weighted_auc += value * impressions
      self.weight += impressions
      self.users += 1

  def merge(self, other: "GroupAucSum") -> None:
    self.weighted_auc += other.weighted_auc
    self.weight += other.weight
    self.users += other.users

  def value(self) -> Optional[float]:
    """GAUC over the users added; None when no user counted."""
    return self.weighted_auc / self.weight if self.weight else None


def gauc(labels, scores, user_ids) -> tuple[Optional[float], int]:
  """(GAUC, users counted) of impressions grouped by `user_ids`; GAUC is
  None when no user has both a click and a non-click."""
  user_ids = np.asarray(user_ids).reshape(-1)
  labels = np.asarray(labels).reshape(-1)
  scores = np.asarray(scores).reshape(-1)
  order = np.argsort(user_ids, kind="mergesort")
  sorted_users = user_ids[order]
  starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
  ends = np.r_[starts[1:], sorted_users.size]
  sums = GroupAucSum()
  for start, end in zip(starts, ends):
    rows = order[start:end]
    sums.add_user(labels[rows], scores[rows])
  return sums.value(), sums.users
