"""GAUC as a TFMA metric, resolved from an EvalConfig as the Evaluator does,
against a hand-counted value (the per-user AUC against sklearn is
tests/test_auc.py)."""

import numpy as np
import pytest
import tensorflow_model_analysis as tfma

from pipeline import gauc_metric


def test_gauc_through_tfma_query_grouping():
  # user 1: AUC 1.0 over 3 impressions; user 2: AUC 0.5 over 4 (the hand
  # example of tests/test_auc.py); user 3: only clicks -> skipped.
  rows = [
      (1, 1, 0.9), (1, 0, 0.2), (1, 0, 0.1),
      (2, 1, 0.4), (2, 0, 0.1), (2, 0, 0.4), (2, 0, 0.9),
      (3, 1, 0.3), (3, 1, 0.6),
  ]
  expected = (1.0 * 3 + 0.5 * 4) / 7
  eval_config = tfma.EvalConfig(
      model_specs=[tfma.ModelSpec(label_key="label")],
      metrics_specs=[tfma.MetricsSpec(
          metrics=[tfma.MetricConfig(class_name="GroupAUC", module=gauc_metric.__name__)],
          query_key="user_id")],
  )
  # The metric is found by module and class name, as the Evaluator does.
  computations = tfma.metrics.metric_specs.to_computations(
      eval_config.metrics_specs, eval_config=eval_config)
  combiner = computations[0].combiner
  by_user = {}
  for user, label, prediction in rows:
    by_user.setdefault(user, []).append((label, prediction))
  # TFMA's query grouping hands one user's impressions as one element.
  elements = [
      tfma.metrics.StandardMetricInputs(
          labels=np.array([l for l, _ in group], np.float32),
          predictions=np.array([p for _, p in group], np.float32),
          example_weights=np.array([1.0]),
          features={"user_id": np.array([user])})
      for user, group in sorted(by_user.items())
  ]
  halves = [elements[:1], elements[1:]]
  accumulators = []
  for half in halves:
    acc = combiner.create_accumulator()
    for element in half:
      acc = combiner.add_input(acc, element)
    accumulators.append(acc)
  output = combiner.extract_output(combiner.merge_accumulators(accumulators))
  by_name = {k.name: v for k, v in output.items()}
  assert by_name["gauc"] == pytest.approx(expected)
  assert by_name["gauc_users"] == 2


def test_gauc_needs_a_query_key():
  with pytest.raises(ValueError, match="query_key"):
    gauc_metric.GroupAUC().computations()
