"""Serving latency of the exported SavedModel's `rank` signature, one thread.

One user's history of L behaviours and N candidates per request. Compared at
L = 1,000 and 10,000 (N = 100 by default), each model untrained (freshly
initialised and exported; latency does not depend on the weights' values):

* eta, signatures looked up in the exported signature table (`rank`);
* eta, the history's signatures computed from the embeddings per request
  (the same model's extra bench-only signature `rank_without_table`);
* full_attention (exact target attention over all L, history projected
  once and shared by the N queries);
* din (short-term branch only: no long-sequence work at all);
* sam (SAM's memory passes over all L, the history embedded once for the N
  candidates);
* the floor: a bare XOR + popcount + top_k over the same N x L signatures
  (no transform, no embeddings, no attention), plain and under XLA;
* what `rank` saves: the same N candidates sent to `serving_default` as N
  tf.Examples that each carry the user's history;
* where eta's time goes: its pieces (history transform, retrieval, attention
  over the retrieved, short DIN branch), each traced alone in one process.
Throughput with batching: `serving_default` over batches of B serialized
examples (each its own user), examples per second, next to `rank`'s
candidates per second.

Each configuration runs in its own process that sets TensorFlow's intra-
and inter-op threads to 1 before anything else and loads the SavedModel
with TensorFlow alone. The configurations of one L take turns (`--rounds`
turns of `--repeats / --rounds` calls each, after `--warmup` untimed calls),
so changes in the machine's load hit all of them alike; a call includes
copying the result to numpy. The parent process makes the request data (ids
Zipf-distributed, identical for every configuration) and exports the models
under --scratch_dir.

Prints a markdown table and saves serving.md, serving.json and serving.png
under --output_dir.

Usage:
  python bench/serving_bench.py [--seq_lens=1000,10000 --num_candidates=100]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

from absl import app
from absl import flags

from preprocessing import environment
from preprocessing import flag_parsing

FLAGS = flags.FLAGS

flags.DEFINE_list("seq_lens", ["1000", "10000"], "History lengths L (also max_seq_len).")
flags.DEFINE_integer("num_candidates", 100, "Candidates N per rank request.")
flags.DEFINE_integer("repeats", 200, "Timed rank calls per configuration.")
flags.DEFINE_integer("examples_repeats", 20, "Timed serving_default calls per configuration.")
flags.DEFINE_integer("warmup", 5, "Untimed calls first.")
flags.DEFINE_integer("throughput_seq_len", 1000, "L of the batched serving_default runs.")
flags.DEFINE_list("throughput_batch_sizes", ["1", "16", "128"],
                  "Examples per serving_default call.")
flags.DEFINE_integer("vocabulary", 10_000_000, "Raw item ids are drawn from [1, vocabulary).")
flags.DEFINE_float("zipf_exponent", 1.2, "Zipf exponent of history item ids.")
flags.DEFINE_integer("num_categories", 5000, "Raw category = item id % num_categories.")
flags.DEFINE_integer("seed", 0, "Seed of the request data and the models.")
flags.DEFINE_string("output_dir", "bench/results", "Where serving.md/.json/.png go.")
flags.DEFINE_string("scratch_dir", "bench/scratch/serving", "Exported models and request data.")
flags.DEFINE_string("worker_spec", None, "Internal: serve one configuration (JSON spec) on stdin.")
flags.DEFINE_integer("rounds", 10, "Turns per configuration (round-robin between processes).")

REQUEST_TIMESTAMP = 1_793_404_800
# Exported models: name -> (variant, ModelConfig overrides). The default
# sizes, and d = 64 with 4 heads of 32 (where attention over L costs more).
MODELS = {
    "eta": ("eta", {}),
    "full_attention": ("full_attention", {}),
    "din": ("din", {}),
    "sam": ("sam", {}),
    "eta_d64_h4": ("eta", {"embedding_dim": 64, "num_heads": 4, "head_dim": 32}),
    "full_attention_d64_h4": ("full_attention",
                              {"embedding_dim": 64, "num_heads": 4, "head_dim": 32}),
}
RANK_WITHOUT_TABLE = "rank_without_table"
HISTORY_KEYS = ("hist_item_ids", "hist_category_ids", "hist_timestamps",
                "hist_behavior_types")


# --- worker: one configuration, one thread -----------------------------------


def _examples(tf, histories: dict[str, np.ndarray], items, categories) -> list[bytes]:
  """Serialized tf.Examples in the training format, one per (history row, candidate)."""
  serialized = []
  for row, (item, category) in enumerate(zip(items, categories)):
    values = {
        "user_id": [row], "item_id": [int(item)], "category_id": [int(category)],
        "timestamp": [REQUEST_TIMESTAMP],
        **{key: histories[key][row].tolist() for key in HISTORY_KEYS},
    }
    example = tf.train.Example()
    for name, ints in values.items():
      example.features.feature[name].int64_list.value.extend(ints)
    serialized.append(example.SerializeToString())
  return serialized


def _floor_function(tf, k: int, xla: bool):
  """XOR + popcount + float32 top_k of N query signatures over L keys."""

  def floor(query_signatures, key_signatures):
    differing = tf.bitwise.bitwise_xor(
        query_signatures[:, tf.newaxis, :], key_signatures[tf.newaxis, :, :]
    )
    distance = tf.reduce_sum(
        tf.cast(tf.raw_ops.PopulationCount(x=differing), tf.int32), axis=-1
    )
    return tf.math.top_k(-tf.cast(distance, tf.float32), k=k).indices

  return tf.function(floor, jit_compile=xla)


def _breakdown_calls(tf, spec: dict[str, Any], data) -> dict[str, Any]:
  """The pieces of eta's rank, each traced alone in this process (no SavedModel)."""
  # The model code (TensorFlow) loads in the worker, after prepare_worker set
  # its threads; the parent process and --help need none of it.
  # pylint: disable=g-import-not-at-top
  from preprocessing import features
  from preprocessing import transforms
  from trainer import config as config_lib
  from trainer import model as model_lib
  from trainer import serving_signatures
  from trainer.layers import history_statistics
  # pylint: enable=g-import-not-at-top

  seq_len, n = spec["seq_len"], spec["num_candidates"]
  model = model_lib.build_model(config_lib.ModelConfig(
      model="eta", max_seq_len=seq_len, seed=spec["seed"], jit_compile=False))
  branch = model.long_branch
  raw_history = {key: tf.constant(data[key][0]) for key in HISTORY_KEYS}
  timestamp = tf.constant(REQUEST_TIMESTAMP, tf.int64)
  items = transforms.hash_ids(tf.constant(data["item_ids"][:n]), features.ITEM_ID.buckets)
  categories = transforms.hash_ids(
      tf.constant(data["category_ids"][:n]), features.CATEGORY_ID.buckets)
  short_len = model.model_config.short_seq_len

  def function(body):
    return tf.function(body, autograph=False)

  with model.xla_disabled(), model.frozen_for_serving():
    transform = function(
        lambda: serving_signatures.transform_history(raw_history, timestamp, seq_len))
    history, mask = transform()
    candidates = model.candidates(items, categories)
    statistics = function(lambda: history_statistics.history_statistics(
        {features.ITEM_ID.name: items[tf.newaxis],
         features.CATEGORY_ID.name: categories[tf.newaxis]},
        {k: v[tf.newaxis] for k, v in history.items()}, mask[tf.newaxis], short_len))
    retrieve = function(lambda: branch.select_shared(candidates, history, mask))
    attend = function(lambda: branch.interest_shared(candidates, history, mask))
    short = function(lambda: model.short_attention.shared(
        candidates["query"],
        model.feature_embeddings.short_keys({k: v[-short_len:] for k, v in history.items()}),
        mask[-short_len:]))
    rank = serving_signatures.rank_function(model)
  rank_inputs = {**raw_history, "item_ids": tf.constant(data["item_ids"][:n]),
                 "category_ids": tf.constant(data["category_ids"][:n]),
                 "request_timestamp": timestamp}

  def timed(body):
    return lambda: tf.nest.map_structure(lambda t: t.numpy(), body())

  return {
      "eta piece: transform the history (hash, gaps, pad), once": timed(transform),
      "eta piece: history statistics (sort once, N range look-ups)": timed(statistics),
      "eta piece: table lookups + XOR/popcount per distinct signature + counting selection":
          timed(retrieve),
      "eta piece: retrieval + attention over the retrieved (distinct rows once)":
          timed(attend),
      f"eta piece: short DIN branch, N x {short_len}": timed(short),
      "eta rank, traced in this process (the pieces + checks + head)":
          timed(lambda: rank(**rank_inputs)),
  }


def prepare_worker(spec: dict[str, Any]):
  """Sets TensorFlow's threads to 1 first, then builds the timed calls by label."""
  # Lazy: TensorFlow loads in the worker that times it, not at import.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  data = np.load(spec["data"])
  n = spec["num_candidates"]
  threads = (tf.config.threading.get_intra_op_parallelism_threads(),
             tf.config.threading.get_inter_op_parallelism_threads())
  if spec["kind"] == "breakdown":
    return _breakdown_calls(tf, spec, data), threads
  if spec["kind"] == "floor":
    rng = np.random.default_rng(spec["seed"])
    queries = tf.constant(rng.integers(-(2**63), 2**63 - 1, (n, 1), dtype=np.int64))
    keys = tf.constant(rng.integers(-(2**63), 2**63 - 1, (spec["seq_len"], 1), dtype=np.int64))
    function = _floor_function(tf, spec["k"], spec["xla"])

    def call():
      return function(queries, keys).numpy()
  else:
    loaded = tf.saved_model.load(spec["export_dir"])
    signature = loaded.signatures[spec["signature"]]
    if spec["kind"] == "rank":
      inputs = {key: tf.constant(data[key][0]) for key in HISTORY_KEYS}
      inputs["item_ids"] = tf.constant(data["item_ids"][:n])
      inputs["category_ids"] = tf.constant(data["category_ids"][:n])
      inputs["request_timestamp"] = tf.constant(REQUEST_TIMESTAMP, tf.int64)
    else:
      batch = spec["batch_size"]
      if spec["same_user"]:
        rows = np.zeros(batch, np.int64)  # one user's history for every candidate
      else:
        rows = np.arange(batch) % len(data["hist_item_ids"])
      histories = {key: data[key][rows] for key in HISTORY_KEYS}
      inputs = {"examples": tf.constant(_examples(
          tf, histories, data["item_ids"][:batch], data["category_ids"][:batch]))}

    def call():
      return signature(**inputs)["probabilities"].numpy()

  return {spec["label"]: call}, threads


def serve_worker(spec: dict[str, Any]) -> None:
  """Worker loop: answers each line "CALLS" on stdin with that many timings.

  Prints one JSON line when ready, then per command one JSON object
  {label: [[wall ms, CPU ms], ...]} (each call timed CALLS times, in turn;
  CPU = this process's CPU time, which a busy machine inflates far less
  than wall time); exits on "quit" or end of input.
  """
  calls, threads = prepare_worker(spec)
  for call in calls.values():
    call()  # first call: function instantiation, not timed
  print(json.dumps({"ready": True, "threads": threads}), flush=True)
  for line in sys.stdin:
    command = line.strip()
    if command == "quit":
      return
    samples = {label: [] for label in calls}
    for _ in range(int(command)):
      for label, call in calls.items():
        started, started_cpu = time.perf_counter(), time.process_time()
        call()
        samples[label].append([(time.perf_counter() - started) * 1000.0,
                               (time.process_time() - started_cpu) * 1000.0])
    print(json.dumps(samples), flush=True)


# --- parent: data, exports, orchestration -------------------------------------


def zipf_ids(rng: np.random.Generator, shape, vocabulary: int, exponent: float) -> np.ndarray:
  """Ids in [1, vocabulary) with P(rank r) ~ r^-exponent over 100,000 popular ids."""
  popular = rng.choice(np.arange(1, vocabulary), size=100_000, replace=False)
  ranks = np.arange(1, len(popular) + 1, dtype=np.float64)
  probabilities = ranks**-exponent
  probabilities /= probabilities.sum()
  return popular[rng.choice(len(popular), size=shape, p=probabilities)]


def make_request_data(path: str, seq_len: int, users: int, candidates: int,
                      seed: int) -> None:
  """`users` histories of exactly seq_len behaviours and the candidates, as .npz."""
  rng = np.random.default_rng(seed + seq_len)
  items = zipf_ids(rng, (users, seq_len), FLAGS.vocabulary, FLAGS.zipf_exponent)
  gaps = np.sort(rng.integers(1, 3 * 10**7, (users, seq_len)), axis=1)[:, ::-1]
  candidate_items = rng.integers(1, FLAGS.vocabulary, max(candidates, users))
  np.savez(
      path,
      hist_item_ids=items.astype(np.int64),
      hist_category_ids=(items % FLAGS.num_categories).astype(np.int64),
      hist_timestamps=(REQUEST_TIMESTAMP - gaps).astype(np.int64),
      # Taobao's mix: 90% page views, then cart, fav, buy.
      hist_behavior_types=rng.choice(4, (users, seq_len), p=[0.9, 0.04, 0.03, 0.03]),
      item_ids=candidate_items.astype(np.int64),
      category_ids=(candidate_items % FLAGS.num_categories).astype(np.int64),
  )


def export_models(seq_len: int, directory: str, seed: int) -> dict[str, Any]:
  """Exports the untrained MODELS at max_seq_len = seq_len; returns their configs."""
  # TensorFlow and the model code load when models are exported: --help and
  # the workers' start need none of it here.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from trainer import config as config_lib  # pylint: disable=g-import-not-at-top
  from trainer import export  # pylint: disable=g-import-not-at-top
  from trainer import model as model_lib  # pylint: disable=g-import-not-at-top
  from trainer import serving_signatures  # pylint: disable=g-import-not-at-top

  configs = {}
  for name, (variant, overrides) in MODELS.items():
    model_config = config_lib.ModelConfig(
        model=variant, max_seq_len=seq_len, seed=seed, jit_compile=False, **overrides
    )
    model = model_lib.build_model(model_config)
    export_dir = os.path.join(directory, f"{name}_L{seq_len}")
    with model.xla_disabled():
      extra = {}
      if variant == "eta":
        # Traced before freezing: hashes the history's embeddings per request.
        extra[RANK_WITHOUT_TABLE] = serving_signatures.rank_function(model)
      with model.frozen_for_serving():
        signatures = export.standalone_signatures(model, seq_len)
        tf.saved_model.save(model, export_dir, signatures={**signatures, **extra})
    configs[name] = model_config.to_dict()
  return configs


class Worker:
  """One configuration in its own process, driven over pipes."""

  def __init__(self, spec: dict[str, Any], scratch: str, index: int):
    self.spec = spec
    self.log_path = os.path.join(scratch, f"worker_{index}.log")
    with open(os.path.join(scratch, f"spec_{index}.json"), "w") as f:
      json.dump(spec, f)
    self._log = open(self.log_path, "w")
    self.process = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__),
         f"--worker_spec={os.path.join(scratch, f'spec_{index}.json')}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
    )
    self.samples: dict[str, list[float]] = {}

  def _answer(self) -> Any:
    line = self.process.stdout.readline()
    if not line:
      self._log.flush()
      with open(self.log_path) as f:
        raise RuntimeError(f"worker {self.spec['label']} died:\n{f.read()[-3000:]}")
    return json.loads(line)

  def wait_ready(self) -> None:
    answer = self._answer()
    if tuple(answer["threads"]) != (1, 1):
      raise RuntimeError(f"worker {self.spec['label']} runs with threads {answer}")

  def run(self, calls: int, record: bool = True) -> None:
    self.process.stdin.write(f"{calls}\n")
    self.process.stdin.flush()
    samples = self._answer()
    if record:
      for label, values in samples.items():
        self.samples.setdefault(label, []).extend(values)

  def close(self) -> None:
    self.process.stdin.write("quit\n")
    self.process.stdin.flush()
    self.process.wait(timeout=60)
    self._log.close()


def time_round_robin(specs: list[dict[str, Any]], scratch: str, first_index: int,
                     rounds: int) -> list[dict[str, list[float]]]:
  """Runs the configurations' workers in turns: `rounds` turns of each.

  Turns interleave the configurations, so a change in the machine's load
  hits all of them alike. A turn is spec["repeats"] / rounds calls.
  """
  workers = [Worker(spec, scratch, first_index + i) for i, spec in enumerate(specs)]
  try:
    for worker in workers:
      worker.wait_ready()
    for worker in workers:
      worker.run(worker.spec["warmup"], record=False)
    for _ in range(rounds):
      for worker in workers:
        worker.run(max(1, worker.spec["repeats"] // rounds))
  finally:
    for worker in workers:
      if worker.process.poll() is None:
        worker.close()
  return [worker.samples for worker in workers]


def summarise(samples: list[list[float]]) -> dict[str, float]:
  """[[wall ms, CPU ms], ...] -> percentiles of both."""
  values = np.array(samples)[:, 0]
  cpu = np.array(samples)[:, 1]
  return {
      "p50_ms": float(np.percentile(values, 50)),
      "p99_ms": float(np.percentile(values, 99)),
      "mean_ms": float(values.mean()),
      "cpu_p50_ms": float(np.percentile(cpu, 50)),
      "calls": len(values),
  }


def plan(seq_lens: list[int], scratch: str) -> list[dict[str, Any]]:
  """Every configuration: (row label fields, worker spec)."""
  n = FLAGS.num_candidates
  common = {"num_candidates": n, "warmup": FLAGS.warmup, "seed": FLAGS.seed}
  specs = []
  for seq_len in seq_lens:
    data = os.path.join(scratch, f"requests_L{seq_len}.npz")

    def model_dir(variant, seq_len=seq_len):
      return os.path.join(scratch, f"{variant}_L{seq_len}")

    for xla in (False, True):
      specs.append({
          **common, "kind": "floor", "seq_len": seq_len, "k": 64, "xla": xla,
          "data": data, "repeats": FLAGS.repeats,
          "label": f"floor: XOR + popcount + top_k{' (XLA)' if xla else ''}",
      })
    for variant, signature, label in (
        ("eta", "rank", "eta rank"),
        ("eta", RANK_WITHOUT_TABLE, "eta rank, traced without freezing (hashes per request)"),
        ("full_attention", "rank", "full_attention rank"),
        ("din", "rank", "din rank (short branch only)"),
        ("sam", "rank", "sam rank (2 memory passes over all L)"),
        ("eta_d64_h4", "rank", "eta rank, d=64, 4 heads"),
        ("full_attention_d64_h4", "rank", "full_attention rank, d=64, 4 heads"),
    ):
      specs.append({
          **common, "kind": "rank", "seq_len": seq_len, "data": data,
          "export_dir": model_dir(variant), "signature": signature,
          "repeats": FLAGS.repeats, "label": label,
      })
    specs.append({
        **common, "kind": "breakdown", "seq_len": seq_len, "data": data,
        "repeats": FLAGS.repeats // 2, "label": "eta pieces",
    })
    specs.append({
        **common, "kind": "examples", "seq_len": seq_len, "data": data,
        "export_dir": model_dir("eta"), "signature": "serving_default",
        "batch_size": n, "same_user": True, "repeats": FLAGS.examples_repeats,
        "label": f"eta serving_default, the {n} candidates as {n} examples",
    })
  seq_len = FLAGS.throughput_seq_len
  for batch_size in (int(b) for b in FLAGS.throughput_batch_sizes):
    specs.append({
        **common, "kind": "examples", "seq_len": seq_len,
        "data": os.path.join(scratch, f"requests_L{seq_len}.npz"),
        "export_dir": os.path.join(scratch, f"eta_L{seq_len}"),
        "signature": "serving_default", "batch_size": batch_size,
        "same_user": False, "repeats": FLAGS.examples_repeats,
        "label": f"throughput: eta serving_default, batch {batch_size}",
    })
  return specs


def markdown(rows: list[dict[str, Any]], info: dict[str, Any]) -> str:
  n = FLAGS.num_candidates
  lines = [
      "# Serving latency of the exported SavedModel (CPU, one thread)",
      "",
      f"One request = one user's history of L behaviours and N={n} candidates. "
      "Untrained models at the ModelConfig defaults (d=8 without item ids: "
      "retrieval looks the signatures of the [category] embeddings up in a table frozen at export; k=64, 64-bit "
      "signatures, 2 heads x 32, DIN (64, 32), MLP (128, 64), history "
      "statistics), and at d=64 with 4 heads of 32, max_seq_len = L; "
      "history item ids Zipf(" f"{FLAGS.zipf_exponent}) over 100,000 popular ids. "
      "Each configuration in its own process with intra/inter-op threads = 1, "
      "the SavedModel loaded with TensorFlow alone; the configurations of one L "
      f"take {FLAGS.rounds} turns each (round-robin) after {FLAGS.warmup} warm-up "
      "calls; a call includes copying the result to numpy. No XLA except "
      "the floor's XLA row (TF Serving runs SavedModels without XLA JIT).",
      "",
      f"Machine: {info['cpus']} CPUs ({info['processor']}), TensorFlow "
      f"{info['tensorflow']}, {info['date']}; 1-min load average "
      f"{info['load_min']:.1f} to {info['load_max']:.1f} during the runs "
      "(other processes share the machine: compare rows, not absolute times).",
      "",
      "## rank latency per request",
      "",
      "| L | configuration | p50 ms | p99 ms | CPU p50 ms | calls | p50 / floor p50 "
      "| CPU p50 / floor | candidates/s |",
      "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  ]
  for row in rows:
    if row["kind"] == "breakdown" or (row["kind"] == "examples" and not row["same_user"]):
      continue
    lines.append(
        f"| {row['seq_len']:,} | {row['label']} | {row['p50_ms']:.2f} | "
        f"{row['p99_ms']:.2f} | {row['cpu_p50_ms']:.2f} | {row['calls']} | "
        f"{row['vs_floor']:.1f} | {row['cpu_vs_floor']:.1f} | "
        f"{row['candidates_per_s']:,.0f} |"
    )
  lines += [
      "",
      "## Where eta's rank time goes",
      "",
      "The same computation in pieces, each a tf.function traced alone in one "
      "process (the model built in process, not loaded; one thread, "
      "round-robin with the rows above).",
      "",
      "| L | piece | p50 ms | p99 ms | CPU p50 ms | calls |",
      "| ---: | --- | ---: | ---: | ---: | ---: |",
  ]
  for row in rows:
    if row["kind"] == "breakdown":
      lines.append(
          f"| {row['seq_len']:,} | {row['label']} | {row['p50_ms']:.2f} | "
          f"{row['p99_ms']:.2f} | {row['cpu_p50_ms']:.2f} | {row['calls']} |"
      )
  lines += [
      "",
      f"## Throughput with batching (serving_default, L={FLAGS.throughput_seq_len:,}, "
      "one thread)",
      "",
      "| configuration | p50 ms per call | p99 ms | examples/s (mean) |",
      "| --- | ---: | ---: | ---: |",
  ]
  for row in rows:
    if row["kind"] == "examples" and not row["same_user"]:
      lines.append(
          f"| {row['label']} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
          f"{row['candidates_per_s']:,.0f} |"
      )
  for row in rows:
    if (row["kind"] == "rank" and row["signature"] == "rank"
        and row["label"] == "eta rank" and row["seq_len"] == FLAGS.throughput_seq_len):
      lines.append(
          f"| for comparison: eta rank, N={n} (one user) | {row['p50_ms']:.2f} | "
          f"{row['p99_ms']:.2f} | {row['candidates_per_s']:,.0f} candidates/s |"
      )
  return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: str) -> None:
  # matplotlib (~2 s) only for the figure, after every measurement.
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  # After use("Agg"): pyplot picks its backend when first imported.
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  latency_rows = [
      r for r in rows
      if r["kind"] in ("floor", "rank") or (r["kind"] == "examples" and r["same_user"])
  ]
  labels = list(dict.fromkeys(r["label"] for r in latency_rows))
  seq_lens = sorted({r["seq_len"] for r in latency_rows})
  figure, axis = plt.subplots(figsize=(11, 5.5))
  width = 0.8 / len(labels)
  for i, label in enumerate(labels):
    by_len = {r["seq_len"]: r for r in latency_rows if r["label"] == label}
    xs = [j + (i - (len(labels) - 1) / 2) * width for j in range(len(seq_lens))]
    p50 = [by_len[s]["p50_ms"] if s in by_len else np.nan for s in seq_lens]
    p99 = [by_len[s]["p99_ms"] if s in by_len else np.nan for s in seq_lens]
    axis.bar(xs, p50, width, label=label)
    axis.scatter(xs, p99, marker="_", color="black", s=120, zorder=3)
  axis.set_xticks(range(len(seq_lens)))
  axis.set_xticklabels([f"L = {s:,}" for s in seq_lens])
  axis.set_yscale("log")
  axis.set_ylabel("ms per request (bar: p50, dash: p99)")
  axis.set_title(
      f"rank signature, N={FLAGS.num_candidates} candidates, one CPU thread, no XLA "
      "(except the floor's XLA bar)"
  )
  axis.legend(fontsize=8, loc="upper left")
  axis.grid(axis="y", which="both", alpha=0.3)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)


def run_benchmark() -> None:
  environment.check_environment()
  seq_lens = [int(s) for s in FLAGS.seq_lens]
  if FLAGS.throughput_seq_len not in seq_lens:
    raise app.UsageError("--throughput_seq_len must be one of --seq_lens")
  scratch = os.path.abspath(FLAGS.scratch_dir)
  os.makedirs(scratch, exist_ok=True)
  started = time.time()
  users = max(int(b) for b in FLAGS.throughput_batch_sizes)
  model_configs = {}
  for seq_len in seq_lens:
    make_request_data(
        os.path.join(scratch, f"requests_L{seq_len}.npz"), seq_len,
        users if seq_len == FLAGS.throughput_seq_len else 1,
        FLAGS.num_candidates, FLAGS.seed,
    )
    model_configs[seq_len] = export_models(seq_len, scratch, FLAGS.seed)
  print(f"exported {len(seq_lens) * len(MODELS)} models in {time.time() - started:.0f} s",
        flush=True)
  rows = []
  specs = plan(seq_lens, scratch)
  groups: dict[Any, list[dict[str, Any]]] = {}
  for spec in specs:
    group = "throughput" if spec["kind"] == "examples" and not spec["same_user"] else spec["seq_len"]
    groups.setdefault(group, []).append(spec)
  index = 0
  for group, group_specs in groups.items():
    load_before = os.getloadavg()[0]
    all_samples = time_round_robin(group_specs, scratch, index, FLAGS.rounds)
    load_after = os.getloadavg()[0]
    index += len(group_specs)
    for spec, samples_by_label in zip(group_specs, all_samples):
      per_call = spec["batch_size"] if spec["kind"] == "examples" else spec["num_candidates"]
      for label, samples in samples_by_label.items():
        summary = summarise(samples)
        rows.append({
            **{k: v for k, v in spec.items() if k not in ("data", "export_dir")},
            "label": label,
            **summary,
            "candidates_per_s": per_call * 1000.0 / summary["mean_ms"],
            "load_average_before": load_before,
            "load_average_after": load_after,
            "samples_wall_cpu_ms": samples,
        })
        print(f"L={spec['seq_len']:>6} {label:<70} p50 {summary['p50_ms']:9.2f} ms "
              f"p99 {summary['p99_ms']:9.2f} ms CPU p50 {summary['cpu_p50_ms']:9.2f} ms",
              flush=True)
  floors = {r["seq_len"]: r for r in rows if r["kind"] == "floor" and not r["xla"]}
  for row in rows:
    row["vs_floor"] = row["p50_ms"] / floors[row["seq_len"]]["p50_ms"]
    row["cpu_vs_floor"] = row["cpu_p50_ms"] / floors[row["seq_len"]]["cpu_p50_ms"]
  loads = [r[k] for r in rows for k in ("load_average_before", "load_average_after")]
  info = environment.machine_info()
  info.update(load_min=min(loads), load_max=max(loads),
              wall_seconds=round(time.time() - started))
  table = markdown(rows, info)
  print(table)
  os.makedirs(FLAGS.output_dir, exist_ok=True)
  with open(os.path.join(FLAGS.output_dir, "serving.md"), "w") as f:
    f.write(table)
  with open(os.path.join(FLAGS.output_dir, "serving.json"), "w") as f:
    json.dump({"environment": info, "model_configs": model_configs, "rows": rows}, f,
              indent=1)
  plot(rows, os.path.join(FLAGS.output_dir, "serving.png"))


def main(argv: list[str]) -> None:
  flag_parsing.refuse_arguments(argv)
  if FLAGS.worker_spec:
    with open(FLAGS.worker_spec) as f:
      serve_worker(json.load(f))
    return
  run_benchmark()


if __name__ == "__main__":
  app.run(main)
