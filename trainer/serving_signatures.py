"""The `rank` signature: one user's raw history, N candidates, no skew.

`rank` inputs (features.RANK_INPUT_NAMES): the history `hist_item_ids`,
`hist_category_ids`, `hist_timestamps`, `hist_behavior_types` (int64 [L],
oldest first; types as the ingestion's codes), the candidates `item_ids`,
`category_ids` (int64 [N]) and `request_timestamp` (int64 scalar) ->
`probabilities` float32 [N].

The history goes through the same `preprocessing.transforms.transform_features`
as training (as ONE row: hashing, the most recent max_seq_len, time-gap
buckets and behaviour types happen once per request), then the model's
shared-history path (`EtaModel.shared_logits`) scores the N candidates with
the same layers as training: retrieval, attention, statistics, the short DIN
branch and the head are the model's own, each doing its history-side work
once. Only the tail of the padded history that holds behaviours is passed on
(at least what top-k needs), which saves the padding's work for short
histories; the result equals the padded computation.

Requests that break the training data's rules are refused with
InvalidArgument naming the input, instead of scoring them: a history
timestamp not before `request_timestamp` (the point-in-time rule), history
timestamps not ascending, negative ids, behaviour types out of range, lists
of different lengths.

Everything here is core TF (no py_function, no XLA): TF Serving loads it.
"""

from __future__ import annotations

from typing import Any, Mapping

import tensorflow as tf

from preprocessing import features
from preprocessing import transforms
from trainer import model as model_lib

RANK_INPUT_NAMES = features.RANK_INPUT_NAMES
_HISTORY_NAMES = tuple(f.name for f in features.RANK_HISTORY_FEATURES)


def rank_input_specs() -> dict[str, tf.TensorSpec]:
  """TensorSpecs of the `rank` inputs: int64 [None] each, the timestamp scalar."""
  return {
      name: tf.TensorSpec(
          [] if name == features.RANK_REQUEST_TIMESTAMP_KEY else [None],
          tf.int64, name=name,
      )
      for name in RANK_INPUT_NAMES
  }


def transform_history(
    raw_history: Mapping[str, tf.Tensor], request_timestamp: tf.Tensor, window: int
) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
  """One user's raw history -> the model's padded history features, once.

  The history goes through `transforms.transform_features` as ONE example
  (so the features are exactly the training ones); its candidate fields are
  placeholders, since the N candidates are hashed separately with the same
  `transforms.hash_ids`.

  Args:
    raw_history: the `rank` history inputs, int64 [L] each (equal lengths,
      oldest first).
    request_timestamp: int64 scalar, the time gaps' reference.
    window: output length; only the last `window` behaviours are read.

  Returns:
    ({name: int64 [window]} for `transforms.SEQUENCE_OUTPUTS`, left-padded;
    mask bool [window], True at real behaviours).
  """
  one = tf.zeros([1], tf.int64)
  inputs = {
      features.USER_ID.name: one,
      features.ITEM_ID.name: one,
      features.CATEGORY_ID.name: one,
      features.TIMESTAMP.name: tf.reshape(request_timestamp, [1]),
  }
  for name, values in raw_history.items():
    inputs[name] = tf.RaggedTensor.from_tensor(tf.reshape(values, [1, -1])[:, -window:])
  transformed = transforms.transform_features(inputs, window)
  history = {name: transformed[name][0] for name in transforms.SEQUENCE_OUTPUTS}
  mask = model_lib.valid_mask(transformed[transforms.HIST_LENGTH], window)[0]
  return history, mask


def _request_checks(raw: Mapping[str, tf.Tensor]) -> list[tf.Operation]:
  """Assertions that refuse requests the training data could not contain."""
  items = raw[features.HIST_ITEM_IDS.name]
  timestamps = raw[features.HIST_TIMESTAMPS.name]
  request_timestamp = raw[features.RANK_REQUEST_TIMESTAMP_KEY]
  length = tf.size(items)
  checks = [
      tf.debugging.assert_equal(
          tf.size(raw[features.RANK_CATEGORY_IDS_KEY]), tf.size(raw[features.RANK_ITEM_IDS_KEY]),
          message=(f"rank: {features.RANK_CATEGORY_IDS_KEY} and "
                   f"{features.RANK_ITEM_IDS_KEY} differ in length"),
      )
  ]
  for name in _HISTORY_NAMES[1:]:
    checks.append(tf.debugging.assert_equal(
        tf.size(raw[name]), length,
        message=f"rank: {name} and {features.HIST_ITEM_IDS.name} differ in length",
    ))
  for name in (features.HIST_ITEM_IDS.name, features.HIST_CATEGORY_IDS.name,
               features.RANK_ITEM_IDS_KEY, features.RANK_CATEGORY_IDS_KEY):
    checks.append(tf.debugging.assert_non_negative(
        raw[name], message=f"rank: {name} holds a negative id"
    ))
  types = raw[features.HIST_BEHAVIOR_TYPES.name]
  checks.append(tf.debugging.assert_equal(
      tf.reduce_all((types >= 0) & (types < len(features.BEHAVIOR_TYPES))), True,
      message=(f"rank: {features.HIST_BEHAVIOR_TYPES.name} must be codes in "
               f"[0, {len(features.BEHAVIOR_TYPES)}) {features.BEHAVIOR_TYPES}"),
  ))
  checks.append(tf.debugging.assert_equal(
      tf.reduce_all(timestamps < request_timestamp), True,
      message=(f"rank: every {features.HIST_TIMESTAMPS.name} must be before "
               f"{features.RANK_REQUEST_TIMESTAMP_KEY} (behaviours strictly "
               "before the request)"),
  ))
  checks.append(tf.debugging.assert_equal(
      tf.reduce_all(timestamps[1:] >= timestamps[:-1]), True,
      message=f"rank: {features.HIST_TIMESTAMPS.name} must be ascending (oldest first)",
  ))
  return checks


def rank_probabilities(model: model_lib.EtaModel, raw: Mapping[str, tf.Tensor]) -> tf.Tensor:
  """Click probabilities of N candidates for one user (the `rank` math).

  Args:
    model: a built EtaModel (inside `frozen_for_serving()` for export).
    raw: the `rank` inputs by `RANK_INPUT_NAMES` (a history longer than
      max_seq_len keeps its most recent part).

  Returns:
    float32 [N].

  Raises:
    tf.errors.InvalidArgumentError (at run time): see `_request_checks`.
  """
  c = model.model_config
  raw = {name: (tf.reshape(raw[name], [-1])
                if name != features.RANK_REQUEST_TIMESTAMP_KEY else raw[name])
         for name in RANK_INPUT_NAMES}
  with tf.control_dependencies(_request_checks(raw)):
    item = transforms.hash_ids(raw[features.RANK_ITEM_IDS_KEY], features.ITEM_ID.buckets)
    category = transforms.hash_ids(
        raw[features.RANK_CATEGORY_IDS_KEY], features.CATEGORY_ID.buckets
    )
    raw_length = tf.size(raw[features.HIST_ITEM_IDS.name], out_type=tf.int64)
  # What the head's log1p(hist_length) reads, as in the batched features.
  hist_length = tf.minimum(raw_length, c.max_seq_len)
  # Cut first to the window the model reads (din: the short sequence), so
  # nothing older is transformed.
  window = model.history_window()
  history, mask = transform_history(
      {name: raw[name] for name in _HISTORY_NAMES},
      raw[features.RANK_REQUEST_TIMESTAMP_KEY], window,
  )
  # Only the tail holds behaviours (left padding); keep at least what the
  # model's shared path needs (top-k: k).
  tail = tf.minimum(
      tf.maximum(tf.minimum(raw_length, window), model.min_history_positions()), window
  )
  start = window - tail
  logits = model.shared_logits(
      item, category, {name: values[start:] for name, values in history.items()},
      mask[start:], hist_length,
  )
  return tf.sigmoid(logits)


def rank_function(model: model_lib.EtaModel) -> Any:
  """The `rank` signature's concrete function.

  Trace it inside `model.xla_disabled()` and `model.frozen_for_serving()`
  (as the export does). Inputs as `rank_input_specs()`; output
  {"probabilities": float32 [N]}.
  """
  specs = rank_input_specs()

  # Parameter names are the signature's input names; the assertion below
  # keeps them equal to the registry's.
  @tf.function(input_signature=[specs[name] for name in RANK_INPUT_NAMES], autograph=False)
  def rank(hist_item_ids, hist_category_ids, hist_timestamps, hist_behavior_types,
           item_ids, category_ids, request_timestamp):
    inputs = (hist_item_ids, hist_category_ids, hist_timestamps, hist_behavior_types,
              item_ids, category_ids, request_timestamp)
    return {
        features.PROBABILITIES_KEY: rank_probabilities(
            model, dict(zip(RANK_INPUT_NAMES, inputs))
        )
    }

  concrete = rank.get_concrete_function()
  names = tuple(spec.name for spec in concrete.structured_input_signature[0])
  if names != RANK_INPUT_NAMES:
    raise AssertionError(f"rank inputs {names} differ from {RANK_INPUT_NAMES}")
  return concrete
