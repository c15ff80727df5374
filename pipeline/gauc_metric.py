"""GAUC (group AUC) as a TFMA metric, for the Evaluator.

GAUC = sum over users u of n_u * AUC_u / sum of n_u, over the users that have
both a clicked and a non-clicked impression in the slice (AUC is undefined
otherwise); n_u is the user's number of impressions. The per-user AUC and
the running sums are `preprocessing.auc`'s, which the trainer's numpy metric
(`trainer.metrics.gauc`) uses too.

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
from tensorflow_model_analysis.metrics import metric_types
from tensorflow_model_analysis.metrics import metric_util
from tensorflow_model_analysis.proto import config_pb2

from preprocessing import auc as auc_lib

GAUC_NAME = "gauc"
USERS_NAME = "gauc_users"


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


class _GroupAUCCombiner(beam.CombineFn):
  """Consumes one user's impressions per input element."""

  def __init__(self, key, users_key, eval_config):
    self._key = key
    self._users_key = users_key
    self._eval_config = eval_config

  def create_accumulator(self) -> auc_lib.GroupAucSum:
    return auc_lib.GroupAucSum()

  def add_input(
      self, accumulator: auc_lib.GroupAucSum,
      element: metric_types.StandardMetricInputs,
  ) -> auc_lib.GroupAucSum:
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
    accumulator.add_user(labels, predictions)
    return accumulator

  def merge_accumulators(
      self, accumulators: Iterable[auc_lib.GroupAucSum]
  ) -> auc_lib.GroupAucSum:
    accumulators = iter(accumulators)
    result = next(accumulators)
    for accumulator in accumulators:
      result.merge(accumulator)
    return result

  def extract_output(
      self, accumulator: auc_lib.GroupAucSum
  ) -> Dict[metric_types.MetricKey, float]:
    value = accumulator.value()
    if value is None:
      value = float("nan")
    return {self._key: value, self._users_key: float(accumulator.users)}
