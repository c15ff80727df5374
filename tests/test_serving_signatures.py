"""Serving: `rank` vs the model's batch path, nonsense refused, the exported SavedModels.

References are independent of the code under test: the model's own batched
forward pass (one tf.Example per candidate, the training path), a numpy
brute-force Hamming top-k, and a numpy SimHash of the embeddings. The
exported model is loaded in a fresh interpreter that imports only
TensorFlow, and inspected with `saved_model_cli`.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from preprocessing import features
from serving import requests as client_requests
from serving import transport
from trainer import config
from trainer import export
from trainer import input as input_lib
from trainer import serving_signatures
from trainer.layers import history_statistics
from trainer.layers import retrieval

from tests import model_helpers

ROOT = pathlib.Path(__file__).resolve().parent.parent
L = 32
K = 8
T0 = 1_793_404_800
INT64_MAX = (1 << 63) - 1
NUM_CATEGORIES = 5


SIZES = dict(
    max_seq_len=L, short_seq_len=8, top_k=K, embedding_dim=8,
    side_embedding_dim=4, num_heads=2, head_dim=4, din_hidden_units=(8,),
    mlp_units=(16,), jit_compile=False,
    # Item retrieval, so that eta exports (and these tests check) the
    # signature table; the defaults' category retrieval is MODELS' "eta_default".
    use_item_ids=True, retrieval_embedding="item",
)


def small_config(variant: str, **overrides) -> config.ModelConfig:
  return model_helpers.small_config(SIZES, variant, **overrides)


def history(length: int, seed: int) -> dict[str, list[int]]:
  """A raw history of `length` behaviours of every type (items repeat: ties)."""
  rng = np.random.default_rng(seed)
  items = rng.integers(1, 40, length)
  gaps = np.sort(rng.integers(1, 10**7, length))[::-1]
  return {
      features.HIST_ITEM_IDS.name: [int(i) for i in items],
      features.HIST_CATEGORY_IDS.name: [int(i % NUM_CATEGORIES) for i in items],
      features.HIST_TIMESTAMPS.name: [int(T0 - g) for g in gaps],
      features.HIST_BEHAVIOR_TYPES.name: [
          int(t) for t in rng.integers(0, len(features.BEHAVIOR_TYPES), length)
      ],
  }


# Candidates: seen and unseen items, a repeat, an id far beyond the vocabulary.
CANDIDATE_ITEMS = [3, 7, 11, 3, 25, 39, 1000, 123456789, INT64_MAX, 0]
CANDIDATE_CATEGORIES = [3, 2, 1, 3, 0, 4, 4000, 2, INT64_MAX, 0]


def rank_inputs(hist: dict[str, list[int]], items=None, categories=None) -> dict:
  items = CANDIDATE_ITEMS if items is None else items
  categories = CANDIDATE_CATEGORIES if categories is None else categories
  return {
      **{name: np.array(values, np.int64).reshape([-1]) for name, values in hist.items()},
      features.RANK_ITEM_IDS_KEY: np.array(items, np.int64),
      features.RANK_CATEGORY_IDS_KEY: np.array(categories, np.int64),
      features.RANK_REQUEST_TIMESTAMP_KEY: np.array(T0, np.int64),
  }


def serialized_examples(inputs: dict) -> list[bytes]:
  """The rank request as one training-format tf.Example per candidate."""
  examples = []
  for item, category in zip(inputs[features.RANK_ITEM_IDS_KEY],
                            inputs[features.RANK_CATEGORY_IDS_KEY]):
    values = {
        features.USER_ID.name: [0],
        features.ITEM_ID.name: [int(item)],
        features.CATEGORY_ID.name: [int(category)],
        features.TIMESTAMP.name: [int(inputs[features.RANK_REQUEST_TIMESTAMP_KEY])],
    }
    for feature in features.RANK_HISTORY_FEATURES:
      values[feature.name] = [int(v) for v in inputs[feature.name]]
    example = tf.train.Example()
    for name, ints in values.items():
      example.features.feature[name].int64_list.value.extend(ints)
    examples.append(example.SerializeToString())
  return examples


def direct_probabilities(model, inputs: dict) -> np.ndarray:
  """The training path: the model called on one example per candidate."""
  examples = serialized_examples(inputs)
  transformed = input_lib.parse_and_transform(
      tf.constant(examples), L, include_label=False
  )
  return tf.sigmoid(model(transformed, training=False)).numpy()


def call_rank(function, inputs: dict) -> np.ndarray:
  tensors = {name: tf.constant(value) for name, value in inputs.items()}
  return function(**tensors)[features.PROBABILITIES_KEY].numpy()


_TRACED: dict[int, object] = {}


def serving_rank(model):
  """`rank` as the export traces it (frozen serving constants, no XLA), traced
  once per model (tracing costs seconds)."""
  if id(model) not in _TRACED:
    with model.xla_disabled(), model.frozen_for_serving():
      _TRACED[id(model)] = (model, serving_signatures.rank_function(model))
  return _TRACED[id(model)][1]


HISTORIES = {
    "typical": history(20, seed=1),
    "shorter_than_k": history(K - 3, seed=2),
    "empty": history(0, seed=3),
    "exactly_max_seq_len": history(L, seed=4),
    "longer_than_max_seq_len": history(L + 17, seed=5),
}


# Every variant, plus eta at the defaults' id settings (no item ids,
# retrieval over [category] hashed per request) with the linear shortcut and
# the statistics' quantile bins.
MODEL_NAMES = config.VARIANTS + ("eta_default",)


@pytest.fixture(scope="module")
def models():
  built = {
      variant: model_helpers.randomized_model(small_config(variant), seed=i)
      for i, variant in enumerate(config.VARIANTS)
  }
  built["eta_default"] = model_helpers.randomized_model(small_config(
      "eta", use_item_ids=False, retrieval_embedding="item_category",
      linear_shortcut=True, prefer_recent=True, statistics_bins=4), seed=99)
  # Bins spread over the statistics' range (log1p counts, fractions), so
  # both paths must encode the same way for rank to match.
  built["eta_default"].long_branch.statistics_encoding.adapt(
      np.random.default_rng(7).exponential(0.6, (200, history_statistics.num_statistics())))
  return built


def test_histories_hold_every_behaviour_type():
  types = set(HISTORIES["typical"][features.HIST_BEHAVIOR_TYPES.name])
  assert types == set(range(len(features.BEHAVIOR_TYPES)))


@pytest.mark.parametrize("variant", MODEL_NAMES)
def test_rank_equals_the_model_called_once_per_candidate(variant, models):
  model = models[variant]
  functions = {"frozen": serving_rank(model)}
  with model.xla_disabled():
    functions["training_weights"] = serving_signatures.rank_function(model)
  spread = []
  for name, hist in HISTORIES.items():
    inputs = rank_inputs(hist)
    want = direct_probabilities(model, inputs)
    spread.append(want.std())
    for path, function in functions.items():
      got = call_rank(function, inputs)
      assert got.shape == (len(CANDIDATE_ITEMS),) and got.dtype == np.float32
      np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{name}, {path}")
  assert max(spread) > 1e-2  # the candidates' scores really differ


@pytest.mark.parametrize("variant", [v for v in config.VARIANTS if v != "din"])
def test_behaviour_types_change_the_scores(variant, models):
  """rank reads the types: the same history as all-pv scores differently."""
  rank = serving_rank(models[variant])
  hist = HISTORIES["typical"]
  as_views = dict(hist, **{features.HIST_BEHAVIOR_TYPES.name: [0] * len(hist[
      features.HIST_ITEM_IDS.name])})
  assert not np.allclose(
      call_rank(rank, rank_inputs(hist)), call_rank(rank, rank_inputs(as_views)), atol=1e-4
  )


def test_rank_single_candidate_and_no_candidates(models):
  model = models["eta"]
  rank = serving_rank(model)
  inputs = rank_inputs(HISTORIES["typical"], items=[INT64_MAX], categories=[0])
  np.testing.assert_allclose(
      call_rank(rank, inputs), direct_probabilities(model, inputs), atol=1e-5
  )
  empty = call_rank(rank, rank_inputs(HISTORIES["typical"], items=[], categories=[]))
  assert empty.shape == (0,)


def _with(hist, **changes):
  return {**hist, **changes}


_TYPICAL = HISTORIES["typical"]
_TIMES = _TYPICAL[features.HIST_TIMESTAMPS.name]
NONSENSE = {
    "candidate lengths": (dict(items=[1, 2], categories=[1]),
                          "category_ids and item_ids differ in length"),
    "history lengths": (dict(hist=_with(_TYPICAL, hist_timestamps=_TIMES[:-1])),
                        "hist_timestamps and hist_item_ids differ in length"),
    "type lengths": (dict(hist=_with(_TYPICAL, hist_behavior_types=[0])),
                     "hist_behavior_types and hist_item_ids differ in length"),
    "future behaviour": (dict(hist=_with(_TYPICAL, hist_timestamps=_TIMES[:-1] + [T0])),
                         "must be before request_timestamp"),
    "not ascending": (dict(hist=_with(_TYPICAL, hist_timestamps=[_TIMES[1], _TIMES[0]]
                                      + _TIMES[2:])),
                      "hist_timestamps must be ascending"),
    "negative history item": (
        dict(hist=_with(_TYPICAL, hist_item_ids=[-5] + _TYPICAL["hist_item_ids"][1:])),
        "hist_item_ids holds a negative id"),
    "negative history category": (
        dict(hist=_with(_TYPICAL, hist_category_ids=[-1] + _TYPICAL["hist_category_ids"][1:])),
        "hist_category_ids holds a negative id"),
    "negative candidate": (dict(items=[3, -7], categories=[1, 1]),
                           "item_ids holds a negative id"),
    "negative candidate category": (dict(items=[3, 7], categories=[1, -1]),
                                    "category_ids holds a negative id"),
    "unknown type": (dict(hist=_with(_TYPICAL, hist_behavior_types=[4] + _TYPICAL[
        "hist_behavior_types"][1:])), "hist_behavior_types must be codes"),
}


@pytest.mark.parametrize("case", sorted(NONSENSE))
@pytest.mark.parametrize("variant", ["eta", "din"])
def test_rank_refuses_nonsense_naming_the_input(case, variant, models):
  rank = serving_rank(models[variant])
  arguments, message = NONSENSE[case]
  inputs = rank_inputs(arguments.get("hist", _TYPICAL), items=arguments.get("items"),
                       categories=arguments.get("categories"))
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    call_rank(rank, inputs)


def test_same_second_behaviours_are_valid(models):
  rank = serving_rank(models["eta"])
  hist = _with(_TYPICAL, hist_timestamps=[_TIMES[0]] * 2 + _TIMES[2:])
  assert np.isfinite(call_rank(rank, rank_inputs(hist))).all()


def test_history_longer_than_max_seq_len_keeps_its_most_recent_part(models):
  rank = serving_rank(models["full_attention"])
  long = HISTORIES["longer_than_max_seq_len"]
  recent = {name: values[-L:] for name, values in long.items()}
  np.testing.assert_allclose(
      call_rank(rank, rank_inputs(long)), call_rank(rank, rank_inputs(recent)), atol=1e-6
  )
  # The window matters: without the most recent behaviour, other scores.
  earlier = {name: values[:-1] for name, values in long.items()}
  assert not np.allclose(
      call_rank(rank, rank_inputs(earlier)), call_rank(rank, rank_inputs(long)), atol=1e-4
  )


# --- signature table --------------------------------------------------------


def numpy_simhash_words(embeddings: np.ndarray, projection: np.ndarray):
  """Packed SimHash in numpy (float64), and which bits are too close to 0 to call."""
  projected = embeddings.astype(np.float64) @ projection.astype(np.float64)
  bits = projected > 0
  ambiguous = np.abs(projected) < 1e-4
  num_words = -(-projection.shape[1] // 64)
  words = np.zeros((len(embeddings), num_words), np.uint64)
  for j in range(projection.shape[1]):
    words[:, j // 64] |= bits[:, j].astype(np.uint64) << np.uint64(j % 64)
  return words.view(np.int64), ambiguous


@pytest.mark.parametrize("num_bits", [64, 128])
def test_signature_table_is_simhash_of_every_item_embedding(num_bits):
  model = model_helpers.randomized_model(small_config("eta", num_bits=num_bits), seed=7)
  branch = model.long_branch
  table = branch.signature_table().numpy()
  words = -(-num_bits // 64)
  assert table.shape == (features.ITEM_ID.buckets, words) and table.dtype == np.int64
  # The training path, row by row.
  slots = tf.range(features.ITEM_ID.buckets, dtype=tf.int64)
  np.testing.assert_array_equal(branch.signatures(slots, slots).numpy(), table)
  # numpy, on a sample of rows (bits within 1e-4 of the hyperplane excluded).
  rows = np.random.default_rng(0).choice(features.ITEM_ID.buckets, 3000, replace=False)
  embeddings = model.feature_embeddings.item_embedding.embeddings.numpy()[rows]
  want, ambiguous = numpy_simhash_words(embeddings, branch.simhash.projection.numpy())
  unambiguous_rows = ~ambiguous.any(axis=1)
  assert unambiguous_rows.mean() > 0.9
  np.testing.assert_array_equal(table[rows][unambiguous_rows], want[unambiguous_rows])


def test_serving_default_through_the_table_scores_like_training(models):
  model = models["eta"]
  examples = []
  for seed in range(24):
    hist = history(int(np.random.default_rng(seed).integers(0, L + 10)), seed=100 + seed)
    inputs = rank_inputs(hist, items=[seed * 3 + 1], categories=[seed % NUM_CATEGORIES])
    examples += serialized_examples(inputs)
  transformed = input_lib.parse_and_transform(tf.constant(examples), L, include_label=False)
  want = model(transformed, training=False).numpy()
  with model.frozen_for_serving():
    assert model.long_branch._table is not None
    got = model(transformed, training=False).numpy()
  assert model.long_branch._table is None
  np.testing.assert_allclose(tf.sigmoid(got), tf.sigmoid(want), atol=1e-5)
  assert want.std() > 1e-2


def test_frozen_rank_reads_no_projection_and_the_hashing_path_does(models):
  model = models["eta"]
  with_table = serving_rank(model)
  with model.xla_disabled():
    without = serving_signatures.rank_function(model)
  projection = model.long_branch.simhash.projection

  def reads_projection(function):
    return any(v is projection for v in function.variables)

  assert not reads_projection(with_table)
  assert reads_projection(without)


# --- shared-history retrieval vs brute force --------------------------------


def brute_force_top_k(queries, keys, mask, k, prefer_recent):
  """Sort positions by (Hamming distance, tie rank); padding after everything."""
  indices = []
  for query in queries:
    distances = [
        sum(bin(int(np.uint64(q ^ c))).count("1") for q, c in zip(query, key))
        for key in keys
    ]
    length = len(keys)
    order = sorted(
        range(length),
        key=lambda p: (not mask[p], distances[p],
                       length - 1 - p if prefer_recent else p),
    )
    indices.append(order[:k])
  return np.array(indices)


@pytest.mark.parametrize("words,prefer_recent,k", [
    (1, False, 12), (2, False, 12), (1, True, 12), (1, False, 1), (1, False, 40),
])
def test_shared_hamming_top_k_selects_the_brute_force_set(words, prefer_recent, k):
  rng = np.random.default_rng(words + 10 * k)
  length, n = 40, 7
  # Few distinct keys: many distance ties.
  pool = rng.integers(-(2**63), 2**63 - 1, (6, words), dtype=np.int64)
  keys = pool[rng.integers(0, len(pool), length)]
  queries = np.concatenate([pool[:3], rng.integers(-(2**63), 2**63 - 1, (n - 3, words),
                                                   dtype=np.int64)])
  mask = rng.random(length) < 0.7
  mask[:5] = False
  layer = retrieval.HammingTopK(k=k, prefer_recent=prefer_recent)
  indices, valid = layer.shared(tf.constant(queries), tf.constant(keys), tf.constant(mask))
  want = brute_force_top_k(queries, keys, mask, k, prefer_recent)
  # The same set, listed in position order.
  np.testing.assert_array_equal(indices.numpy(), np.sort(want, axis=1))
  np.testing.assert_array_equal(valid.numpy(), mask[np.sort(want, axis=1)])
  layer_indices, _ = layer(
      tf.constant(queries), tf.constant(np.broadcast_to(keys, (n,) + keys.shape)),
      tf.constant(np.broadcast_to(mask, (n, length))),
  )
  np.testing.assert_array_equal(indices.numpy(), np.sort(layer_indices.numpy(), axis=1))


@pytest.mark.parametrize("prefer_recent", [False, True])
def test_shared_hamming_top_k_breaks_ties_across_large_groups(prefer_recent):
  """Groups (equal signatures) far larger than k, several tied at the
  threshold: the tie-break reads only each group's first/last quota."""
  rng = np.random.default_rng(3)
  length, n, k = 500, 9, 16
  pool = rng.integers(-(2**63), 2**63 - 1, (5, 1), dtype=np.int64)
  # Two pool keys at equal distance from the first query: tied groups.
  pool[2] = pool[1] ^ np.int64(1 << 5) ^ np.int64(1 << 9)
  keys = pool[rng.integers(0, len(pool), length)]
  queries = np.concatenate([pool[:4], pool[1:2] ^ np.int64(1 << 5),
                            rng.integers(-(2**63), 2**63 - 1, (n - 5, 1), dtype=np.int64)])
  mask = rng.random(length) < 0.9
  layer = retrieval.HammingTopK(k=k, prefer_recent=prefer_recent)
  indices, valid = layer.shared(tf.constant(queries), tf.constant(keys), tf.constant(mask))
  want = np.sort(brute_force_top_k(queries, keys, mask, k, prefer_recent), axis=1)
  np.testing.assert_array_equal(indices.numpy(), want)
  np.testing.assert_array_equal(valid.numpy(), mask[want])


# --- the exported SavedModel, in a fresh interpreter -------------------------

# Imports only TensorFlow; feeds the rank cases and the client's request
# tensors (TensorProtos, as TF Serving receives them) to the loaded signatures
# of every exported variant.
LOAD_AND_CALL = r"""
import json, sys
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2
assert not any(m.split('.')[0] in ('trainer', 'preprocessing', 'serving')
               for m in sys.modules)
cases_path, out_path = sys.argv[1:]
all_cases = json.load(open(cases_path))
all_out = {}
for variant, cases in all_cases.items():
  loaded = tf.saved_model.load(cases['dir'])
  rank = loaded.signatures['rank']
  serve = loaded.signatures['serving_default']
  out = {'rank': {}, 'examples': {}, 'proto_rank': {}, 'proto_examples': {}}
  for name, inputs in cases['rank'].items():
    tensors = {k: tf.constant(np.array(v, np.int64)) for k, v in inputs.items()}
    out['rank'][name] = rank(**tensors)['probabilities'].numpy().tolist()
  for name, hex_examples in cases['examples'].items():
    examples = tf.constant([bytes.fromhex(e) for e in hex_examples])
    out['examples'][name] = serve(examples=examples)['probabilities'].numpy().tolist()
  for key, signature in (('proto_rank', rank), ('proto_examples', serve)):
    for name, protos in cases.get(key, {}).items():
      tensors = {k: tf.constant(tf.make_ndarray(tensor_pb2.TensorProto.FromString(
          bytes.fromhex(p)))) for k, p in protos.items()}
      out[key][name] = signature(**tensors)['probabilities'].numpy().tolist()
  out['variables'] = {
      name: sorted(v.name for v in loaded.signatures[name].variables)
      for name in ('rank', 'serving_default')}
  all_out[variant] = out
json.dump(all_out, open(out_path, 'w'))
"""

CLIENT_CASES = ("typical", "shorter_than_k", "empty", "exactly_max_seq_len")


def client_cases(cases: dict) -> dict:
  """The client's gRPC request tensors for the rank cases (eta)."""
  requests = {}
  cases["proto_rank"], cases["proto_examples"] = {}, {}
  for name in CLIENT_CASES:
    inputs = rank_inputs(HISTORIES[name])
    request = client_requests.RankRequest(
        **{k: v.tolist() for k, v in inputs.items()}, max_seq_len=L
    )
    requests[name] = request
    cases["proto_rank"][name] = {
        k: v.SerializeToString().hex()
        for k, v in transport.rank_predict_request(request).inputs.items()
    }
    examples = transport.examples_predict_request(
        client_requests.examples_for_candidates(request, user_id=0)
    )
    cases["proto_examples"][name] = {
        k: v.SerializeToString().hex() for k, v in examples.inputs.items()
    }
  return requests


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
  """Every variant exported by export.export_standalone, then loaded in a
  fresh TF-only interpreter (eta also fed the client's request tensors)."""
  directory = tmp_path_factory.mktemp("serving")
  all_cases, requests = {}, {}
  for variant, model in models.items():
    export_dir = str(directory / variant)
    export.export_standalone(model, export_dir, L)
    cases = {"dir": export_dir, "rank": {}, "examples": {}}
    for name, hist in HISTORIES.items():
      inputs = rank_inputs(hist)
      cases["rank"][name] = {k: v.tolist() for k, v in inputs.items()}
      cases["examples"][name] = [e.hex() for e in serialized_examples(inputs)]
    if variant == "eta":
      requests = client_cases(cases)
    all_cases[variant] = cases
  (directory / "cases.json").write_text(json.dumps(all_cases))
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_USE_LEGACY_KERAS")}
  eta_dir = all_cases["eta"]["dir"]
  cli = subprocess.Popen(
      [str(pathlib.Path(sys.executable).parent / "saved_model_cli"), "show", "--all",
       "--dir", eta_dir],
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
      cwd=str(directory),
  )
  loaded = subprocess.run(
      [sys.executable, "-c", LOAD_AND_CALL, str(directory / "cases.json"),
       str(directory / "out.json")],
      capture_output=True, text=True, timeout=600, env=env, cwd=str(directory),
  )
  cli_out, cli_err = cli.communicate(timeout=300)
  assert loaded.returncode == 0, loaded.stderr[-3000:]
  assert cli.returncode == 0, cli_err[-3000:]
  return {
      "models": models,
      "dir": eta_dir,
      "out": json.loads((directory / "out.json").read_text()),
      "cli": cli_out,
      "requests": requests,
  }


@pytest.mark.parametrize("variant", MODEL_NAMES)
def test_loaded_rank_equals_loaded_serving_default_and_the_model(variant, exported):
  """Histories with pv, cart, fav and buy: rank (one history, N candidates)
  equals serving_default on the N matching examples, in a TF-only process."""
  model = exported["models"][variant]
  out = exported["out"][variant]
  for name, hist in HISTORIES.items():
    want = direct_probabilities(model, rank_inputs(hist))
    np.testing.assert_allclose(out["rank"][name], out["examples"][name], atol=1e-5,
                               err_msg=name)
    np.testing.assert_allclose(out["rank"][name], want, atol=1e-5, err_msg=name)


def test_client_request_tensors_score_like_the_direct_call(exported):
  model = exported["models"]["eta"]
  out = exported["out"]["eta"]
  for name in CLIENT_CASES:
    want = direct_probabilities(model, rank_inputs(HISTORIES[name]))
    np.testing.assert_allclose(out["proto_rank"][name], want, atol=1e-5)
    np.testing.assert_allclose(out["proto_examples"][name], want, atol=1e-5)


def test_exported_eta_reads_the_table_not_the_projection(exported):
  for signature, names in exported["out"]["eta"]["variables"].items():
    assert names, signature
    assert not any("simhash" in name for name in names), (signature, names)
  graph = (pathlib.Path(exported["dir"]) / "saved_model.pb").read_bytes()
  assert b"_XlaMustCompile" not in graph


def _signature_block(cli_text: str, name: str) -> str:
  match = re.search(
      rf"signature_def\['{name}'\]:\n(.*?)Method name is: (\S+)", cli_text, re.S
  )
  assert match, f"{name} missing from saved_model_cli output"
  assert match.group(2) == "tensorflow/serving/predict"
  return match.group(1)


def _tensor_infos(block: str, kind: str) -> dict[str, tuple[str, str]]:
  section = block.split("output(s):")[0 if kind == "inputs" else 1]
  return {
      m.group(1): (m.group(2), m.group(3))
      for m in re.finditer(
          rf"{kind}\['(\w+)'\] tensor_info:\n\s+dtype: (\w+)\n\s+shape: (\S+)", section
      )
  }


def test_saved_model_cli_lists_both_signatures_as_documented(exported):
  rank = _signature_block(exported["cli"], features.RANK_SIGNATURE)
  assert _tensor_infos(rank, "inputs") == {
      features.HIST_ITEM_IDS.name: ("DT_INT64", "(-1)"),
      features.HIST_CATEGORY_IDS.name: ("DT_INT64", "(-1)"),
      features.HIST_TIMESTAMPS.name: ("DT_INT64", "(-1)"),
      features.HIST_BEHAVIOR_TYPES.name: ("DT_INT64", "(-1)"),
      features.RANK_ITEM_IDS_KEY: ("DT_INT64", "(-1)"),
      features.RANK_CATEGORY_IDS_KEY: ("DT_INT64", "(-1)"),
      features.RANK_REQUEST_TIMESTAMP_KEY: ("DT_INT64", "()"),
  }
  assert _tensor_infos(rank, "outputs") == {features.PROBABILITIES_KEY: ("DT_FLOAT", "(-1)")}
  default = _signature_block(exported["cli"], features.SERVING_DEFAULT_SIGNATURE)
  assert _tensor_infos(default, "inputs") == {
      features.SERVING_EXAMPLES_KEY: ("DT_STRING", "(-1)")
  }
  assert _tensor_infos(default, "outputs") == {
      features.PROBABILITIES_KEY: ("DT_FLOAT", "(-1)")
  }


@pytest.mark.parametrize("overrides,message", [
    ({"item_ids": [3.0, 7]}, "must be an integer"),
    ({"item_ids": np.array([3, 7], np.int32).astype(np.float32)}, "must be an integer"),
    ({features.HIST_ITEM_IDS.name: HISTORIES["typical"][features.HIST_ITEM_IDS.name][:-1]},
     "history lengths differ"),
    ({"category_ids": [3]}, "item_ids but 1 category_ids"),
    ({"item_ids": [], "category_ids": []}, "no candidates"),
    (HISTORIES["longer_than_max_seq_len"], f"more than max_seq_len={L}"),
])
def test_bad_requests_are_stopped_by_the_client(overrides, message):
  values = dict(HISTORIES["typical"], item_ids=[3, 7], category_ids=[3, 2],
                request_timestamp=T0)
  values.update(overrides)
  with pytest.raises(client_requests.RequestError, match=message):
    client_requests.RankRequest(**values, max_seq_len=L)


def test_unknown_and_huge_ids_pass_the_client_and_get_scores(exported):
  request = exported["requests"]["typical"]
  assert INT64_MAX in request.item_ids and 123456789 in request.item_ids
  scores = np.array(exported["out"]["eta"]["proto_rank"]["typical"])
  assert scores.shape == (len(CANDIDATE_ITEMS),) and np.isfinite(scores).all()
  assert ((scores > 0) & (scores < 1)).all()
