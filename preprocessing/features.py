"""The feature registry: names, dtypes, id buckets and sequence lengths.

Every stage reads this module (ingestion, Transform, the model, the serving
signatures and the client); nothing keeps a parallel list. It imports no
TensorFlow so that light tools (the client, the log parser) can use it.

Ids are raw int64 values in the logs. The model sees them through a stable
hash into `buckets` slots (slot 0 is reserved for padding), which keeps an
item's slot the same across daily retrains so warm starts stay valid.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

# Behaviour types of the Taobao UserBehavior format, in code order: an
# example stores `hist_behavior_types` as the index into this tuple.
BEHAVIOR_TYPES: tuple[str, ...] = ("pv", "cart", "fav", "buy")

# Days are UTC days: spans, the eval split and the time chunks count these.
SECONDS_PER_DAY = 86_400

DEFAULT_MAX_SEQ_LEN = 1024
# The longest history we support end to end (ingestion, training, serving).
MAX_SUPPORTED_SEQ_LEN = 10_000
# The short-term sequence is the tail of the long one, never stored twice.
SHORT_SEQ_LEN = 50
# Slot reserved for padding in every hashed id and bucketed sequence.
PADDING_INDEX = 0
# Time gaps (impression minus behaviour, seconds) go into log2 buckets:
# bucket = 1 + min(floor(log2(max(gap, 1))), TIME_GAP_BUCKETS - 2); 0 is padding.
TIME_GAP_BUCKETS = 32


@dataclasses.dataclass(frozen=True)
class Feature:
  """One feature of a `tf.train.Example`.

  Attributes:
    name: key in the tf.Example and in every dict of tensors.
    dtype: 'int64' or 'float32'.
    is_sequence: True for a variable-length list (the behaviour history).
    buckets: for id features, the hash slots including padding slot 0.
    required: False when some input formats lack it (behaviour types).
    description: what it is.
  """

  name: str
  dtype: str
  is_sequence: bool
  description: str
  buckets: Optional[int] = None
  required: bool = True


USER_ID = Feature("user_id", "int64", False, "Raw user id (GAUC grouping).")
ITEM_ID = Feature(
    "item_id", "int64", False, "Candidate item id.", buckets=1 << 18
)
CATEGORY_ID = Feature(
    "category_id", "int64", False, "Candidate item's category id.",
    buckets=1 << 12,
)
TIMESTAMP = Feature(
    "timestamp", "int64", False, "Impression time, Unix seconds (UTC)."
)
LABEL = Feature("label", "int64", False, "1 if the impression was clicked.")
HIST_ITEM_IDS = Feature(
    "hist_item_ids", "int64", True,
    "Item ids of the user's behaviours strictly before the impression, "
    "oldest first, the most recent max_seq_len.",
    buckets=ITEM_ID.buckets,
)
HIST_CATEGORY_IDS = Feature(
    "hist_category_ids", "int64", True, "Categories of hist_item_ids.",
    buckets=CATEGORY_ID.buckets,
)
HIST_TIMESTAMPS = Feature(
    "hist_timestamps", "int64", True, "Unix seconds of hist_item_ids."
)
HIST_BEHAVIOR_TYPES = Feature(
    "hist_behavior_types", "int64", True,
    "Index into BEHAVIOR_TYPES of each behaviour; absent when the log has "
    "no types (MovieLens).",
    buckets=len(BEHAVIOR_TYPES),
    required=False,
)

ALL_FEATURES: tuple[Feature, ...] = (
    USER_ID,
    ITEM_ID,
    CATEGORY_ID,
    TIMESTAMP,
    LABEL,
    HIST_ITEM_IDS,
    HIST_CATEGORY_IDS,
    HIST_TIMESTAMPS,
    HIST_BEHAVIOR_TYPES,
)
SEQUENCE_FEATURES: tuple[Feature, ...] = tuple(
    f for f in ALL_FEATURES if f.is_sequence
)
LABEL_KEY = LABEL.name
BY_NAME: dict[str, Feature] = {f.name: f for f in ALL_FEATURES}


def feature(name: str) -> Feature:
  """Looks a feature up by name, with a clear error for a typo."""
  try:
    return BY_NAME[name]
  except KeyError:
    raise KeyError(
        f"unknown feature {name!r}; known: {sorted(BY_NAME)}"
    ) from None


# The exported model's serving interface, shared by the export, the serving
# client and the infra validation: signature names, input keys, output key.
SERVING_DEFAULT_SIGNATURE = "serving_default"
# serving_default input: serialized tf.Example strings (label absent), [batch].
SERVING_EXAMPLES_KEY = "examples"
RANK_SIGNATURE = "rank"
# rank inputs: one user's history by the features' names, int64 [L] each,
# oldest first (behaviour types as the ingestion's codes, the index into
# BEHAVIOR_TYPES; a log without types sends 0 = pv, as ingestion does), the
# N candidates, int64 [N], and the request's Unix seconds, an int64 scalar.
RANK_HISTORY_FEATURES: tuple[Feature, ...] = (
    HIST_ITEM_IDS, HIST_CATEGORY_IDS, HIST_TIMESTAMPS, HIST_BEHAVIOR_TYPES,
)
RANK_ITEM_IDS_KEY = "item_ids"
RANK_CATEGORY_IDS_KEY = "category_ids"
RANK_REQUEST_TIMESTAMP_KEY = "request_timestamp"
# The rank signature's inputs, in signature order.
RANK_INPUT_NAMES: tuple[str, ...] = tuple(f.name for f in RANK_HISTORY_FEATURES) + (
    RANK_ITEM_IDS_KEY, RANK_CATEGORY_IDS_KEY, RANK_REQUEST_TIMESTAMP_KEY,
)
# Output of both signatures: float32 click probabilities, [batch] or [N].
PROBABILITIES_KEY = "probabilities"
# The exported model's signature that applies the Transform to raw examples,
# for the Evaluator (TFMA's preprocessing_function_names).
TRANSFORM_FEATURES_SIGNATURE = "transform_features"
# Slicing keys: features preprocessing_fn adds, which the Evaluator slices by.
SLICE_HIST_LENGTH_BUCKET = "slice_hist_length_bucket"
SLICE_CATEGORY_ID = "slice_category_id"
