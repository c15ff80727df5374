"""GAUC (group AUC) as a TFMA metric, for the Evaluator.

GAUC = sum over users u of n_u * AUC_u / sum of n_u, over the users that have
both a clicked and a non-clicked impression in the slice (AUC is undefined
otherwise); n_u is the user's number of impressions. This is the definition
of `trainer.metrics.gauc` (the trainer's numpy metric), restated here because
the pipeline does not import trainer code.

Use it in a MetricsSpec with `query_key='user_id'`: TFMA then groups a
slice's examples by user and hands the combiner one user at a time. It is
TFMA's python metric API (a `metric_types.Metric` with a Beam CombineFn), so
it needs no Keras metric class. The combiner keeps two floats, so memory does
not grow with the number of users; TFMA's grouping by user does (one user's
impressions at a time).
"""

from __future__ import annotations

from typing import Dict, Iterable, List, Optional

import apache_beam as beam
import numpy as np
from scipy import stats as scipy_stats
from tensorflow_model_analysis.metrics import metric_types
from tensorflow_model_analysis.metrics import metric_util
from tensorflow_model_analysis.proto import config_pb2

GAUC_NAME = "gauc"
USERS_NAME = "gauc_users"


def user_auc(labels: np.ndarray, predictions: np.ndarray) -> Optional[float]:
  """AUC of one user's impressions (ties count 1/2), None without both labels."""
  labels = np.asarray(labels, dtype=np.float64).reshape(-1) > 0.5
  predictions = np.asarray(predictions, dtype=np.float64).reshape(-1)
  positives = int(labels.sum())
  negatives = labels.size - positives
  if positives == 0 or negatives == 0:
    return None
  ranks = scipy_stats.rankdata(predictions)  # average ranks for ties
  return float(
      (ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives)
  )


class GroupAUC(metric_types.Metric):
  """Impression-weighted mean per-user AUC; also reports the users counted."""

  def __init__(self, name: str = GAUC_NAME):
    super().__init__(_group_auc_computations, name=name)


metric_types.register_metric(GroupAUC)


def _group_auc_computations(
    name: str = GAUC_NAME,
    eval_config: Optional[config_pb2.EvalConfig] = None,
    model_names: Optional[List[str]] = None,
    output_names: Optional[List[str]] = None,
    sub_keys=None,
    example_weighted: bool = False,
    query_key: str = "",
) -> metric_types.MetricComputations:
  del sub_keys
  if not query_key:
    raise ValueError("GroupAUC needs a MetricsSpec with query_key='user_id'")
  computations = []
  for model_name in model_names or [""]:
    for output_name in output_names or [""]:
      key = metric_types.MetricKey(
          name=name, model_name=model_name, output_name=output_name,
          example_weighted=example_weighted,
      )
      users_key = metric_types.MetricKey(
          name=USERS_NAME, model_name=model_name, output_name=output_name,
          example_weighted=example_weighted,
      )
      computations.append(
          metric_types.MetricComputation(
              keys=[key, users_key],
              preprocessors=None,
              combiner=_GroupAUCCombiner(key, users_key, eval_config),
          )
      )
  return computations


class _Accumulator:
  __slots__ = ["weighted_auc", "weight", "users"]

  def __init__(self):
    self.weighted_auc = 0.0
    self.weight = 0.0
    self.users = 0


class _GroupAUCCombiner(beam.CombineFn):
  """Consumes one user's impressions per input element."""

  def __init__(self, key, users_key, eval_config):
    self._key = key
    self._users_key = users_key
    self._eval_config = eval_config

  def create_accumulator(self) -> _Accumulator:
    return _Accumulator()

  def add_input(
      self, accumulator: _Accumulator, element: metric_types.StandardMetricInputs
  ) -> _Accumulator:
    labels, predictions, _ = next(
        metric_util.to_label_prediction_example_weight(
            element,
            eval_config=self._eval_config,
            model_name=self._key.model_name,
            output_name=self._key.output_name,
            example_weighted=False,
            flatten=False,
            allow_none=True,
            require_single_example_weight=True,
        )
    )
    if labels is None or predictions is None:
      return accumulator
    labels = np.asarray(labels).reshape(-1)
    value = user_auc(labels, predictions)
    if value is not None:
      accumulator.weighted_auc += value * labels.size
      accumulator.weight += labels.size
      accumulator.users += 1
    return accumulator

  def merge_accumulators(self, accumulators: Iterable[_Accumulator]) -> _Accumulator:
    accumulators = iter(accumulators)
    result = next(accumulators)
    for accumulator in accumulators:
      result.weighted_auc += accumulator.weighted_auc
      result.weight += accumulator.weight
      result.users += accumulator.users
    return result

  def extract_output(self, accumulator: _Accumulator) -> Dict[metric_types.MetricKey, float]:
    value = accumulator.weighted_auc / accumulator.weight if accumulator.weight else float("nan")
    return {self._key: value, self._users_key: float(accumulator.users)}
