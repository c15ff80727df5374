"""CPU cost of the ETA layers' kernels, side by side in one process.

Three questions, each answered by timing the alternatives on the same inputs
(B x L behaviours of d-dim embeddings, m-bit signatures, top-k):

1. Signatures: hashing every history position (gather embeddings, SimHash of
   [B, L, d]) vs hashing each distinct item id of the batch once and
   gathering, vs a signature-table lookup (serving), vs the exact dot product
   that ETA replaces.
2. Retrieval: Hamming distance + top_k scored in float32 (HammingTopK) vs the
   same exact ranking in int32, each with and without XLA.
3. Attention: multi-head target attention over the k retrieved behaviours
   (gather included) vs over all L, with and without XLA.

History ids follow a Zipf law over the vocabulary (repeat visits), which is
what makes "distinct ids" smaller than B x L; the table reports how many.
Warm-up calls first, then --repeats rounds that time every case once each
(round-robin, so load from other processes hits all cases alike); median and
p90 per case. A call's time includes copying its result to numpy.

Prints a markdown table and saves bench/results/layers.md and layers.json.

Usage:
  python bench/layers_bench.py [--batch_size=256 --seq_len=1024 --dim=64
                                --num_bits=64 --k=64 --repeats=20]
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any, Callable

import numpy as np

from absl import app
from absl import flags

from preprocessing import environment

FLAGS = flags.FLAGS

flags.DEFINE_integer("batch_size", 256, "Examples per batch B.")
flags.DEFINE_integer("seq_len", 1024, "History length L.")
flags.DEFINE_integer("dim", 64, "Embedding width d.")
flags.DEFINE_integer("num_bits", 64, "SimHash bits m.")
flags.DEFINE_integer("k", 64, "Retrieved behaviours.")
flags.DEFINE_integer("num_heads", 4, "Attention heads.")
flags.DEFINE_integer("head_dim", 16, "Attention head width.")
flags.DEFINE_integer("vocabulary", 1 << 18, "Item embedding rows.")
flags.DEFINE_float("zipf_exponent", 1.2, "Zipf exponent of history item ids.")
flags.DEFINE_integer("repeats", 20, "Timed calls per case (median reported).")
flags.DEFINE_integer("warmup", 3, "Untimed calls per case first.")
flags.DEFINE_integer("seed", 0, "Seed of the inputs.")
flags.DEFINE_string("output_dir", "bench/results", "Where layers.md/.json go.")


def time_round_robin(cases: list[dict[str, Any]], warmup: int,
                     repeats: int) -> list[dict[str, float]]:
  """Median and p90 wall time (ms) per case, calls interleaved across cases.

  Round-robin order spreads any change in machine load over every case
  alike, so the ratios stay comparable. A call includes copying its result
  to numpy.
  """
  # TensorFlow (~5 s) loads when the benchmark runs: --help answers at once.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  def run(case):
    outputs = case["function"](*case["args"])
    return tf.nest.map_structure(lambda t: t.numpy(), outputs)

  for case in cases:
    for _ in range(warmup):
      run(case)
  samples = [[] for _ in cases]
  for _ in range(repeats):
    for case, case_samples in zip(cases, samples):
      started = time.perf_counter()
      run(case)
      case_samples.append((time.perf_counter() - started) * 1000.0)
  timings = []
  for case_samples in samples:
    case_samples.sort()
    timings.append({
        "median_ms": statistics.median(case_samples),
        "p90_ms": case_samples[min(len(case_samples) - 1,
                                   int(0.9 * len(case_samples)))],
    })
  return timings


def zipf_ids(rng: np.random.Generator, shape, vocabulary: int,
             exponent: float) -> np.ndarray:
  """Ids 1..vocabulary-1 with P(rank r) ~ r^-exponent, ranks shuffled."""
  ranks = np.arange(1, vocabulary)
  probabilities = ranks ** -exponent
  probabilities /= probabilities.sum()
  permutation = rng.permutation(ranks)
  return permutation[rng.choice(vocabulary - 1, size=shape, p=probabilities)]


def build_cases(config: dict[str, Any]) -> list[dict[str, Any]]:
  """The timed functions and their inputs, grouped by question."""
  # Lazy as in time_round_robin(): TensorFlow and the layers built on it.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from trainer.layers import retrieval  # pylint: disable=g-import-not-at-top
  from trainer.layers import simhash  # pylint: disable=g-import-not-at-top
  from trainer.layers import target_attention  # pylint: disable=g-import-not-at-top

  b, length, d = config["batch_size"], config["seq_len"], config["dim"]
  k, m = config["k"], config["num_bits"]
  rng = np.random.default_rng(config["seed"])
  table = tf.constant(
      rng.standard_normal((config["vocabulary"], d)).astype(np.float32)
  )
  history_ids = tf.constant(
      zipf_ids(rng, (b, length), config["vocabulary"],
               config["zipf_exponent"]), tf.int64
  )
  candidate_ids = tf.constant(
      rng.integers(1, config["vocabulary"], (b,)), tf.int64
  )
  config["distinct_history_ids"] = int(
      np.unique(history_ids.numpy()).size
  )
  lengths = rng.integers(k // 2, length + 1, (b,))
  mask = tf.constant(np.arange(length)[None, :] >= (length - lengths[:, None]))

  hasher = simhash.SimHash(num_bits=m, seed=1)
  hasher.build([None, d])
  signature_table = hasher(table)
  top_k = retrieval.HammingTopK(k=k)
  attention = target_attention.MultiHeadTargetAttention(
      num_heads=config["num_heads"], head_dim=config["head_dim"]
  )
  attention(tf.zeros([b, d]), tf.zeros([b, k, d]), tf.zeros([b, k], tf.bool))

  def hash_all_positions(ids):
    return hasher(tf.gather(table, ids))

  def hash_distinct_then_gather(ids):
    distinct, position = tf.unique(tf.reshape(ids, [-1]))
    signatures = tf.gather(hasher(tf.gather(table, distinct)), position)
    return tf.reshape(signatures, [b, length, hasher.num_words])

  def signature_table_lookup(ids):
    return tf.gather(signature_table, ids)

  def exact_dot_product(candidates, ids):
    query = tf.gather(table, candidates)
    return tf.einsum("bd,bld->bl", query, tf.gather(table, ids))

  query_signatures = tf.gather(signature_table, candidate_ids)
  key_signatures = tf.gather(signature_table, history_ids)

  def top_k_int32(query_sig, key_sig, mask):
    # The same exact ranking as HammingTopK, scored in int32.
    distance = simhash.hamming_distance(query_sig[:, tf.newaxis], key_sig)
    distance = tf.where(mask, distance, 64 * key_sig.shape[-1] + 1)
    score = -(distance * length + tf.range(length, dtype=tf.int32))
    _, indices = tf.math.top_k(score, k=k)
    return indices, tf.gather(mask, indices, batch_dims=1)

  indices, valid = top_k(query_signatures, key_signatures, mask)
  queries = tf.gather(table, candidate_ids)

  def attention_over_top_k(query, ids, indices, valid):
    keys = tf.gather(table, tf.gather(ids, indices, batch_dims=1))
    return attention(query, keys, valid)

  def attention_over_all(query, ids, mask):
    return attention(query, tf.gather(table, ids), mask)

  def compiled(function, xla):
    return tf.function(function, jit_compile=xla)

  cases = []

  def add(group, name, function, args, xla_options=(False, True)):
    for xla in xla_options:
      cases.append({"group": group, "case": name, "xla": xla,
                    "function": compiled(function, xla), "args": args})

  add("signatures", "SimHash of every position [B, L, d]",
      hash_all_positions, (history_ids,))
  # tf.unique has no XLA kernel (dynamic output shape).
  add("signatures", "SimHash of distinct ids, then gather",
      hash_distinct_then_gather, (history_ids,), xla_options=(False,))
  add("signatures", "signature-table lookup (serving)",
      signature_table_lookup, (history_ids,))
  add("signatures", "exact dot product q . e_l (what ETA replaces)",
      exact_dot_product, (candidate_ids, history_ids))
  add("retrieval", "Hamming + top_k, float32 scores (HammingTopK)", top_k,
      (query_signatures, key_signatures, mask))
  add("retrieval", "Hamming + top_k, int32 scores", top_k_int32,
      (query_signatures, key_signatures, mask))
  add("attention", f"target attention over top-k (k={k}, gather incl.)",
      attention_over_top_k, (queries, history_ids, indices, valid))
  add("attention", f"target attention over all L={length}",
      attention_over_all, (queries, history_ids, mask))
  return cases


def run_benchmark(config: dict[str, Any]) -> list[dict[str, Any]]:
  cases = build_cases(config)
  timings = time_round_robin(cases, config["warmup"], config["repeats"])
  rows = [
      {"group": case["group"], "case": case["case"], "xla": case["xla"],
       **timing}
      for case, timing in zip(cases, timings)
  ]
  baselines = {}
  for row in rows:
    baselines.setdefault(row["group"], row["median_ms"])
  for row in rows:
    row["vs_first_in_group"] = row["median_ms"] / baselines[row["group"]]
  return rows


def markdown(rows: list[dict[str, Any]], config: dict[str, Any],
             machine: dict[str, Any]) -> str:
  lines = [
      "# ETA layer kernels on CPU",
      "",
      f"B={config['batch_size']}, L={config['seq_len']}, d={config['dim']}, "
      f"m={config['num_bits']}, k={config['k']}, heads="
      f"{config['num_heads']}x{config['head_dim']}; history ids Zipf("
      f"{config['zipf_exponent']}) over {config['vocabulary']} rows: "
      f"{config['distinct_history_ids']} distinct of "
      f"{config['batch_size'] * config['seq_len']} positions. "
      f"Median of {config['repeats']} round-robin calls after "
      f"{config['warmup']} warm-up calls, result copied to numpy.",
      "",
      f"Machine: {machine['cpus']} CPUs ({machine['processor']}), "
      f"TensorFlow {machine['tensorflow']}, {machine['date']}; "
      f"1-min load average {machine['load_average_1min_before']:.1f} "
      f"before, {machine['load_average_1min']:.1f} after.",
      "",
      "| group | case | XLA | median ms | p90 ms | x first in group |",
      "| --- | --- | --- | ---: | ---: | ---: |",
  ]
  for row in rows:
    lines.append(
        f"| {row['group']} | {row['case']} | {'yes' if row['xla'] else 'no'} "
        f"| {row['median_ms']:.2f} | {row['p90_ms']:.2f} "
        f"| {row['vs_first_in_group']:.2f} |"
    )
  return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
  del argv
  environment.check_environment()
  config = {
      name: FLAGS[name].value
      for name in ("batch_size", "seq_len", "dim", "num_bits", "k",
                   "num_heads", "head_dim", "vocabulary", "zipf_exponent",
                   "repeats", "warmup", "seed")
  }
  if config["k"] > config["seq_len"]:
    raise app.UsageError("--k must not exceed --seq_len.")
  load_before = os.getloadavg()[0]
  rows = run_benchmark(config)
  info = environment.machine_info()
  info["load_average_1min_before"] = load_before
  table = markdown(rows, config, info)
  print(table)
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  with open(os.path.join(FLAGS.output_dir, "layers.md"), "w") as f:
    f.write(table)
  with open(os.path.join(FLAGS.output_dir, "layers.json"), "w") as f:
    json.dump({"config": config, "environment": info, "rows": rows}, f,
              indent=2)


if __name__ == "__main__":
  app.run(main)
