"""Serving paths of the exported model: the signature table and `rank`.

Two things the training graph does not do:

* The signature table. Once training is over, an item's SimHash signature is
  a function of its id alone, so export computes the packed signature of
  every item slot from the final embeddings (`signature_table`, int64
  [ITEM_ID.buckets, num_words]) and stores it in the SavedModel as a
  constant. The eta serving paths then look signatures up (`tf.gather`)
  instead of multiplying embeddings by the projection. Other variants have
  no item-only signature (SDIM hashes [item, category] pairs) and get none.

* The `rank` signature: one user's raw history (`hist_item_ids`,
  `hist_category_ids`, `hist_timestamps`, int64 [L]) and N candidates
  (`item_ids`, `category_ids`, int64 [N]) at `request_timestamp` (int64
  scalar) -> `probabilities` float32 [N]. The history goes through the same
  `preprocessing.transforms.transform_features` as training (as one row, so
  hashing, truncation to the most recent max_seq_len and time-gap bucketing
  happen once), and is shared by the N candidates:
    - eta: the L history signatures are looked up once; per candidate only
      XOR + popcount over L and a top-k remain;
    - the k retrieved behaviours of all candidates are embedded and
      projected to attention keys/values once per DISTINCT position
      (`tf.unique`), never once per candidate;
    - full_attention projects the L keys once and attends with N queries;
    - avgpool pools once; sdim hashes the history once; sim_hard and
      exact_topk share the history's ids and embeddings;
    - the short-term DIN branch (last short_seq_len behaviours) runs per
      candidate: DIN's activation unit is a function of the pair.
  The long branch reads only the last max(hist_length, k) positions of the
  padded history (attention is order-invariant and padding is masked, so
  the scores equal the padded computation), which saves the padding's work
  for users with short histories; din, which has no long branch, transforms
  only the last short_seq_len behaviours (the head still reads the full
  count, min(L, max_seq_len)).

`batch_logits` is the batched (`serving_default`) counterpart: the model's
own forward pass, with eta's signatures taken from the table.

Everything here is core TF (no py_function, no XLA): TF Serving loads it.
"""

from __future__ import annotations

from typing import Any, Mapping, Optional

import tensorflow as tf

from preprocessing import features
from preprocessing import transforms
from trainer import config as config_lib
from trainer import model as model_lib
from trainer.layers import simhash
from trainer.layers import target_attention

# Inputs of the `rank` signature, in the order of `rank_input_specs`.
RANK_INPUT_NAMES: tuple[str, ...] = (
    features.HIST_ITEM_IDS.name,
    features.HIST_CATEGORY_IDS.name,
    features.HIST_TIMESTAMPS.name,
    features.RANK_ITEM_IDS_KEY,
    features.RANK_CATEGORY_IDS_KEY,
    features.RANK_REQUEST_TIMESTAMP_KEY,
)
# float32 holds every integer below 2**24 exactly (see retrieval.HammingTopK).
_MAX_EXACT_FLOAT32_INT = 2**24


def rank_input_specs() -> dict[str, tf.TensorSpec]:
  """TensorSpecs of the `rank` inputs: int64 [None] each, the timestamp scalar."""
  return {
      name: tf.TensorSpec(
          [] if name == features.RANK_REQUEST_TIMESTAMP_KEY else [None],
          tf.int64, name=name,
      )
      for name in RANK_INPUT_NAMES
  }


def uses_signature_table(model: model_lib.EtaModel) -> bool:
  """True for the variants whose retrieval reads item-only signatures (eta)."""
  return model.model_config.model == "eta"


def signature_table(model: model_lib.EtaModel) -> Optional[tf.Tensor]:
  """The frozen signature of every item slot, or None when the variant has none.

  Computed eagerly (outside any function being traced) from the model's
  current item embeddings, so a tf.function that uses it captures a
  constant: the SavedModel stores the table, not the recipe.

  Returns:
    int64 [features.ITEM_ID.buckets, num_words] (row = item slot), or None.
  """
  if not uses_signature_table(model):
    return None
  with tf.init_scope():
    return tf.constant(model.signature_table().numpy())


def _logit_from_parts(
    model: model_lib.EtaModel, parts: list[tf.Tensor], hist_length: tf.Tensor
) -> tf.Tensor:
  """The model's head, as in `EtaModel.call`: [parts, log1p(L)] -> MLP -> logit [B]."""
  parts = parts + [tf.math.log1p(tf.cast(hist_length, tf.float32))[:, tf.newaxis]]
  hidden = tf.concat(parts, axis=-1)
  for layer in model.mlp_layers:
    hidden = layer(hidden, training=False)
  return tf.squeeze(model.logit_layer(hidden), axis=-1)


def batch_logits(
    model: model_lib.EtaModel,
    inputs: Mapping[str, tf.Tensor],
    table: Optional[tf.Tensor],
) -> tf.Tensor:
  """Click logits [B] of a batch of transformed examples (inference).

  Without a table this is `model(inputs, training=False)`. With one (eta),
  the same network, but the candidates' and behaviours' signatures are
  `tf.gather(table, slot)` instead of SimHash of the embeddings.

  Args:
    model: a built EtaModel.
    inputs: `transform_features` outputs (see `model_lib.MODEL_INPUTS`).
    table: `signature_table(model)` or None.
  """
  if table is None:
    return model(inputs, training=False)
  if not uses_signature_table(model):
    raise ValueError(
        f"a signature table applies to eta only, not {model.model_config.model!r}"
    )
  c = model.model_config
  item_id = tf.reshape(inputs[features.ITEM_ID.name], [-1])
  category_id = tf.reshape(inputs[features.CATEGORY_ID.name], [-1])
  hist_length = tf.reshape(inputs[transforms.HIST_LENGTH], [-1])
  history = {name: inputs[name] for name in transforms.SEQUENCE_OUTPUTS}
  mask = model_lib.valid_mask(hist_length, c.max_seq_len)
  _, query = model.candidate_representation(item_id, category_id)
  short = model.short_interest(query, history, mask)
  long = model.long_interest_from_signatures(
      query,
      tf.gather(table, item_id),
      history,
      tf.gather(table, history[features.HIST_ITEM_IDS.name]),
      mask,
      training=False,
  )
  return _logit_from_parts(model, [query, short, long], hist_length)


# --- rank: one history shared by N candidates --------------------------------


def shared_hamming_top_k(
    query_signatures: tf.Tensor,
    key_signatures: tf.Tensor,
    mask: tf.Tensor,
    k: int,
    prefer_recent: bool = False,
) -> tuple[tf.Tensor, tf.Tensor]:
  """`retrieval.HammingTopK` for N queries over ONE shared history.

  Same scores and tie order as the layer (distance * T + tie rank, padding
  at distance max + 1, float32 top_k), without broadcasting the history's
  signatures to N copies; T may be dynamic.

  Args:
    query_signatures: int64 [N, W].
    key_signatures: int64 [T, W], T >= k.
    mask: bool [T], True at real behaviours.
    k: how many to retrieve per query.
    prefer_recent: the layer's tie order (False: lower position first).

  Returns:
    indices int32 [N, k] into T, nearest first; valid bool [N, k].
  """
  words = key_signatures.shape[-1]
  distance = simhash.hamming_distance(
      query_signatures[:, tf.newaxis, :], key_signatures[tf.newaxis, :, :]
  )  # int32 [N, T]
  padding_distance = simhash.BITS_PER_WORD * words + 1
  distance = tf.where(mask[tf.newaxis, :], distance, padding_distance)
  length = tf.shape(key_signatures, out_type=tf.int32)[0]
  position = tf.range(length, dtype=tf.int32)
  tie_rank = (length - 1 - position) if prefer_recent else position
  score = -tf.cast(distance * length + tie_rank, tf.float32)
  _, indices = tf.math.top_k(score, k=k, sorted=True)
  return indices, tf.gather(mask, indices)


def _split_heads(layer, projected: tf.Tensor) -> tf.Tensor:
  """[..., H * dh] -> [..., H, dh] for a MultiHeadTargetAttention layer."""
  return tf.reshape(
      projected,
      tf.concat([tf.shape(projected)[:-1], [layer.num_heads, layer.head_dim]], 0),
  )


def attend_selected_shared(
    model: model_lib.EtaModel,
    query: tf.Tensor,
    history: Mapping[str, tf.Tensor],
    indices: tf.Tensor,
    valid: tf.Tensor,
) -> tf.Tensor:
  """Target attention of each candidate over its own k behaviours of ONE history.

  The layer's math (`MultiHeadTargetAttention`, inference), with the keys and
  values of each distinct retrieved position embedded and projected once.

  Args:
    query: float32 [N, Dq] candidate queries.
    history: the four history id tensors, int64 [T].
    indices: int32 [N, k] positions into T; valid: bool [N, k].

  Returns:
    float32 [N, output width].
  """
  layer = model.long_attention
  positions, slot = tf.unique(tf.reshape(indices, [-1]))
  keys = model.behaviour_keys(
      {name: tf.gather(history[name], positions) for name in history}
  )  # [U, Dk]
  shape = tf.concat([tf.shape(indices), [layer.num_heads, layer.head_dim]], 0)
  heads_keys = tf.reshape(tf.gather(layer.key_projection(keys), slot), shape)
  heads_values = tf.reshape(tf.gather(layer.value_projection(keys), slot), shape)
  heads_query = _split_heads(layer, layer.query_projection(query))[:, tf.newaxis]
  weights = target_attention.attention_weights(heads_query, heads_keys, valid)
  heads = target_attention.weighted_values(weights, heads_values)  # [N, 1, H, dh]
  output = tf.reshape(heads, [-1, layer.num_heads * layer.head_dim])
  if layer.output_projection is not None:
    output = layer.output_projection(output)
  return output


def _sdim_shared(
    model: model_lib.EtaModel,
    item: tf.Tensor,
    category: tf.Tensor,
    history: Mapping[str, tf.Tensor],
    mask: tf.Tensor,
) -> tf.Tensor:
  """`SdimAggregation` for N candidates over one history -> float32 [N, 2d].

  A tau-bit signature is compared as one integer code (equal codes = equal
  bits), and the bucket sums are one [N, T, G] x [T, D] contraction, so the
  history's embeddings are never copied per candidate.
  """
  layer = model.sdim_aggregation
  hist_items = history[features.HIST_ITEM_IDS.name]
  hist_categories = history[features.HIST_CATEGORY_IDS.name]
  behaviours = tf.concat(
      [model.item_embedding(hist_items), model.category_embedding(hist_categories)],
      axis=-1,
  )  # [T, D]
  place_values = tf.bitwise.left_shift(
      tf.constant(1, tf.int64), tf.range(layer.tau, dtype=tf.int64)
  )

  def codes(signatures):
    bits = simhash.unpack_bits(signatures, layer.num_bits)
    grouped = tf.reshape(
        bits, tf.concat([tf.shape(bits)[:-1], [layer.num_signatures, layer.tau]], 0)
    )
    return tf.reduce_sum(
        tf.where(grouped, place_values, tf.zeros_like(place_values)), axis=-1
    )  # [.., G]

  query_codes = codes(model.item_category_signatures(item, category))  # [N, G]
  key_codes = codes(model.item_category_signatures(hist_items, hist_categories))
  same_bucket = tf.equal(query_codes[:, tf.newaxis, :], key_codes[tf.newaxis])
  same_bucket &= mask[tf.newaxis, :, tf.newaxis]  # [N, T, G]
  bucket_sums = tf.einsum(
      "ntg,td->ngd", tf.cast(same_bucket, behaviours.dtype), behaviours
  )
  normalised = tf.math.l2_normalize(bucket_sums, axis=-1, epsilon=1e-12)
  return tf.reduce_mean(normalised, axis=1)


def _shared_long_interest(
    model: model_lib.EtaModel,
    table: Optional[tf.Tensor],
    item: tf.Tensor,
    category: tf.Tensor,
    candidate_item: tf.Tensor,
    query: tf.Tensor,
    history: Mapping[str, tf.Tensor],
    mask: tf.Tensor,
) -> tf.Tensor:
  """The variant's long branch for N candidates over one history [T] (not din).

  Args:
    item, category: int64 [N] candidate slots.
    candidate_item: float32 [N, d] candidate item embeddings.
    query: float32 [N, 2d].
    history: the four history id tensors, int64 [T] (left-padded tail).
    mask: bool [T].

  Returns:
    float32 [N, width].
  """
  c = model.model_config
  variant = c.model
  k = c.top_k
  hist_items = history[features.HIST_ITEM_IDS.name]
  if variant == "eta":
    if table is not None:
      candidate_signatures = tf.gather(table, item)
      history_signatures = tf.gather(table, hist_items)
    else:
      candidate_signatures = model.item_signatures(item)
      history_signatures = model.item_signatures(hist_items)
    indices, valid = shared_hamming_top_k(
        candidate_signatures, history_signatures, mask, k,
        prefer_recent=model.hamming_top_k.prefer_recent,
    )
    return attend_selected_shared(model, query, history, indices, valid)
  if variant == "exact_topk":
    behaviours = model.item_embedding(hist_items)  # [T, d]
    scores = tf.matmul(candidate_item, behaviours, transpose_b=True)  # [N, T]
    scores = tf.where(mask[tf.newaxis], scores, tf.float32.min)
    indices = tf.math.top_k(scores, k=k).indices
    valid = tf.gather(mask, indices)
    return attend_selected_shared(model, query, history, indices, valid)
  if variant == "sim_hard":
    n = tf.shape(item)[0]
    hist_categories = history[features.HIST_CATEGORY_IDS.name]
    length = tf.shape(hist_categories)[0]
    indices, valid = model_lib.same_category_recent(
        category,
        tf.broadcast_to(hist_categories[tf.newaxis], [n, length]),
        tf.broadcast_to(mask[tf.newaxis], [n, length]),
        k,
    )
    return attend_selected_shared(model, query, history, indices, valid)
  if variant == "full_attention":
    keys = model.behaviour_keys(history)  # [T, Dk], projected once in the layer
    shared = model.long_attention(
        query[tf.newaxis], keys[tf.newaxis], mask[tf.newaxis], training=False
    )
    return shared[0]
  if variant == "avgpool":
    keys = model.behaviour_keys(history)
    weights = tf.cast(mask, keys.dtype)[:, tf.newaxis]
    count = tf.maximum(tf.reduce_sum(weights), 1.0)
    pooled = tf.reduce_sum(keys * weights, axis=0) / count
    return tf.broadcast_to(pooled[tf.newaxis], [tf.shape(item)[0], tf.shape(pooled)[0]])
  if variant == "sdim":
    return _sdim_shared(model, item, category, history, mask)
  raise ValueError(f"no shared long branch for variant {variant!r}")


def _long_branch_tail(model_config: config_lib.ModelConfig) -> int:
  """Positions the long branch needs at least (top-k needs k of them)."""
  if model_config.model in config_lib.TOP_K_VARIANTS:
    return model_config.top_k
  return 1


def transform_history(
    raw_history: Mapping[str, tf.Tensor], request_timestamp: tf.Tensor, window: int
) -> tuple[dict[str, tf.Tensor], tf.Tensor]:
  """One user's raw history -> the model's padded history features, once.

  The history goes through `transforms.transform_features` as ONE example
  (so the features are exactly the training ones); its candidate fields are
  placeholders, since the N candidates are hashed separately with the same
  `transforms.hash_ids`.

  Args:
    raw_history: `hist_item_ids`, `hist_category_ids`, `hist_timestamps`,
      int64 [L] each (equal lengths, oldest first).
    request_timestamp: int64 scalar, the time gaps' reference.
    window: output length; only the last `window` behaviours are read.

  Returns:
    ({name: int64 [window]} for `transforms.SEQUENCE_OUTPUTS}`, left-padded;
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
    inputs[name] = tf.RaggedTensor.from_tensor(
        tf.reshape(values, [1, -1])[:, -window:]
    )
  transformed = transforms.transform_features(inputs, window)
  history = {name: transformed[name][0] for name in transforms.SEQUENCE_OUTPUTS}
  mask = model_lib.valid_mask(transformed[transforms.HIST_LENGTH], window)[0]
  return history, mask


def rank_probabilities(
    model: model_lib.EtaModel,
    table: Optional[tf.Tensor],
    raw: Mapping[str, tf.Tensor],
) -> tf.Tensor:
  """Click probabilities of N candidates for one user (the `rank` math).

  Args:
    model: a built EtaModel.
    table: `signature_table(model)` (eta) or None (eta hashes the history
      once per request instead).
    raw: the `rank` inputs by `RANK_INPUT_NAMES`: history int64 [L] (oldest
      first; a longer one than max_seq_len keeps its most recent part),
      candidates int64 [N], request_timestamp int64 [].

  Returns:
    float32 [N].

  Raises:
    tf.errors.InvalidArgumentError (at run time): the history's three lists
      or the candidates' two lists differ in length.
  """
  c = model.model_config
  max_seq_len = c.max_seq_len
  item_ids = tf.reshape(raw[features.RANK_ITEM_IDS_KEY], [-1])
  category_ids = tf.reshape(raw[features.RANK_CATEGORY_IDS_KEY], [-1])
  raw_history = {
      f.name: tf.reshape(raw[f.name], [-1])
      for f in (features.HIST_ITEM_IDS, features.HIST_CATEGORY_IDS,
                features.HIST_TIMESTAMPS)
  }
  raw_length = tf.size(raw_history[features.HIST_ITEM_IDS.name], out_type=tf.int64)
  checks = [
      tf.debugging.assert_equal(
          tf.size(item_ids), tf.size(category_ids),
          message=(
              f"rank: {features.RANK_ITEM_IDS_KEY} and "
              f"{features.RANK_CATEGORY_IDS_KEY} differ in length"
          ),
      )
  ] + [
      tf.debugging.assert_equal(
          tf.size(values, out_type=tf.int64), raw_length,
          message=f"rank: {name} and {features.HIST_ITEM_IDS.name} differ in length",
      )
      for name, values in raw_history.items()
  ]
  with tf.control_dependencies(checks):
    item = transforms.hash_ids(item_ids, features.ITEM_ID.buckets)
  category = transforms.hash_ids(category_ids, features.CATEGORY_ID.buckets)
  n = tf.shape(item)[0]
  # What the head's log1p(hist_length) reads, as in the batched features.
  hist_length = tf.minimum(raw_length, max_seq_len)

  # Cut first to the window the variant reads (din: the short sequence
  # only), so nothing older is hashed.
  window = max_seq_len if c.model != "din" else c.short_seq_len
  history, mask = transform_history(
      raw_history, raw[features.RANK_REQUEST_TIMESTAMP_KEY], window
  )
  window_length = tf.minimum(raw_length, window)

  candidate_item, query = model.candidate_representation(item, category)
  short_len = c.short_seq_len
  short_history = {
      name: tf.broadcast_to(values[tf.newaxis, -short_len:], [n, short_len])
      for name, values in history.items()
  }
  short_mask = tf.broadcast_to(mask[tf.newaxis, -short_len:], [n, short_len])
  parts = [query, model.short_interest(query, short_history, short_mask)]

  if c.model != "din":
    # Only the tail holds behaviours (left padding); keep at least what
    # top-k needs so k <= T.
    tail = tf.minimum(
        tf.maximum(window_length, _long_branch_tail(c)), window
    )
    start = window - tail
    tail_history = {name: values[start:] for name, values in history.items()}
    parts.append(_shared_long_interest(
        model, table, item, category, candidate_item, query, tail_history,
        mask[start:],
    ))
  logits = _logit_from_parts(model, parts, tf.broadcast_to(hist_length, [n]))
  return tf.sigmoid(logits)


def _check_exact_scores(model: model_lib.EtaModel) -> None:
  c = model.model_config
  if c.model == "eta":
    words = simhash.num_words(c.num_bits)
    if (simhash.BITS_PER_WORD * words + 2) * c.max_seq_len > _MAX_EXACT_FLOAT32_INT:
      raise ValueError(
          f"max_seq_len={c.max_seq_len} with {c.num_bits}-bit signatures exceeds "
          "the exact float32 retrieval score range"
      )


def rank_function(
    model: model_lib.EtaModel, table: Optional[tf.Tensor]
) -> Any:
  """The `rank` signature's concrete function (trace it with XLA off).

  Inputs as `rank_input_specs()`; output {"probabilities": float32 [N]}.
  """
  _check_exact_scores(model)
  specs = rank_input_specs()

  # Parameter names are the signature's input names; the assertion below
  # keeps them equal to the registry's.
  @tf.function(
      input_signature=[specs[name] for name in RANK_INPUT_NAMES], autograph=False
  )
  def rank(hist_item_ids, hist_category_ids, hist_timestamps, item_ids,
           category_ids, request_timestamp):
    raw = dict(zip(
        RANK_INPUT_NAMES,
        (hist_item_ids, hist_category_ids, hist_timestamps, item_ids,
         category_ids, request_timestamp),
    ))
    return {
        features.PROBABILITIES_KEY: rank_probabilities(model, table, raw)
    }

  concrete = rank.get_concrete_function()
  names = tuple(spec.name for spec in concrete.structured_input_signature[0])
  if names != RANK_INPUT_NAMES:
    raise AssertionError(f"rank inputs {names} differ from {RANK_INPUT_NAMES}")
  return concrete
