"""Training benchmarks of the model family: quality per variant, speed vs L.

Part `quality`: the synthetic default data set (`preprocessing.synthetic`,
its default user count unless --users says otherwise) through the ingestion
CLI (`preprocessing.build_examples`, max_seq_len 1024), then every variant
trained by the standalone trainer (`trainer.train`, one subprocess each) with
the same data, steps and seeds;
eval AUC, GAUC, log loss, calibration and training examples/s, next to the
generator's oracle AUC. Optionally the same on MovieLens (latest-small,
GroupLens licence, research use) through the ingestion adapter.

Part `speed`: random full-length histories (Zipf item ids, every position
real), batch 256, for eta, exact_topk, full_attention and din at
max_seq_len 256 / 1,024 / 4,096 / 10,000, d = 32 and 64, k = 64, m = 64, with
and without XLA on the retrieval/attention functions. Each configuration
runs in its own subprocess: training examples/s (median wall time of the
Keras train step under tf.function, after warm-up), inference examples/s (the
model call under tf.function, median), and the process's peak RSS.

Prints markdown tables and writes bench/results/train.md, train.json and
train_speed.png.

Usage:
  python bench/train_bench.py [--part=all|quality|speed] [--quality_steps=1500]
      [--seeds=0,1] [--movielens] [--speed_lengths=256,1024,4096,10000]
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from absl import app
from absl import flags
from absl import logging

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MOVIELENS_DIR = os.path.join(os.path.dirname(REPO), "shared", "datasets", "movielens-latest-small")

_PART = flags.DEFINE_enum(
    "part", "all", ["all", "quality", "speed", "report"],
    "What to run (report: only re-render train.md from train.json, e.g. after merging).")
_SYNTHETIC = flags.DEFINE_bool("synthetic", True, "Run the quality part on the synthetic data.")
_MERGE = flags.DEFINE_list(
    "merge", [], "Other train.json files whose quality rows join this one's (runs in parallel).")
_WORK_DIR = flags.DEFINE_string(
    "work_dir", os.path.join(REPO, "bench", "scratch", "train_bench"), "Scratch space."
)
_RESULTS_DIR = flags.DEFINE_string(
    "results_dir", os.path.join(REPO, "bench", "results"), "Where results go."
)
_USERS = flags.DEFINE_integer(
    "users", None, "Synthetic users; unset: the generator's default (the demo's data).")
_QUALITY_STEPS = flags.DEFINE_integer(
    "quality_steps", 2000, "Training steps per variant (an upper bound under early stopping).")
_QUALITY_BATCH = flags.DEFINE_integer("quality_batch_size", 256, "Training batch size.")
_QUALITY_HPARAMS = flags.DEFINE_string(
    "quality_hparams", "{}", "JSON of extra settings for every quality run."
)
_SEEDS = flags.DEFINE_list("seeds", ["0"], "Model seeds (data seed stays 0).")
_ABLATION = flags.DEFINE_list(
    "ablation", [],
    "Settings sets of ABLATIONS to run for every variant instead of the defaults "
    "(e.g. 'defaults,no_statistics,item_ids'); empty: the defaults only.",
)
_VARIANTS = flags.DEFINE_list(
    "variants",
    ["eta", "exact_topk", "full_attention", "sim_hard", "sdim", "avgpool", "sam", "din"],
    "Variants of the quality part.",
)
_MOVIELENS = flags.DEFINE_bool("movielens", True, "Also run the quality part on MovieLens.")
_MOVIELENS_DIR = flags.DEFINE_string(
    "movielens_dir", MOVIELENS_DIR, "MovieLens latest-small (ratings.csv, movies.csv)."
)
_SPEED_LENGTHS = flags.DEFINE_list("speed_lengths", ["256", "1024", "4096", "10000"], "L values.")
_SPEED_DIMS = flags.DEFINE_list("speed_dims", ["32", "64"], "Embedding dims d.")
_SPEED_MODELS = flags.DEFINE_list(
    "speed_models", ["eta", "exact_topk", "full_attention", "sam", "din"], "Variants timed."
)
_SPEED_XLA = flags.DEFINE_list(
    "speed_xla", ["on", "off"], "XLA settings timed (on, off or both).")
_SPEED_STEPS = flags.DEFINE_integer(
    "speed_steps", 10, "Timed steps per configuration at L <= 1024 (fewer above)."
)
_SINGLE = flags.DEFINE_string("single_speed_config", None, "Internal: one speed run (JSON).")

# Each change of the model-quality work alone, against the defaults: the
# name is the row label, the dict the --hparams of that run (din ignores
# what it has no branch for).
ABLATIONS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "no_statistics": {"long_statistics": False},
    "item_ids": {"use_item_ids": True},
    "d32": {"embedding_dim": 32},
    "no_early_stopping": {"validation_days": 0, "train_steps": 1000},
    # The model before the model-quality work: item ids and item retrieval,
    # d = 32, no statistics, a fixed 500 steps (bench/results/train.md then).
    "before": {"long_statistics": False, "use_item_ids": True,
               "retrieval_embedding": "item", "embedding_dim": 32,
               "validation_days": 0, "train_steps": 500},
    # Separate attention embeddings for retrieval / sam's scorer (DARE).
    "decoupled": {"decoupled_attention": True},
    # After early stopping, a fresh model on every training day (the
    # validation day included) for the selected length.
    "refit": {"refit": True},
    # Plain Adam, without the default weight averaging.
    "no_averaging": {"ema_momentum": 0.0},
}
SPEED_BATCH = 256
SPEED_TOP_K = 64
SPEED_NUM_BITS = 64


def _env() -> dict[str, str]:
  return dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)


def _run(args: list[str], log_path: str) -> None:
  with open(log_path, "w") as log:
    result = subprocess.run(args, stdout=log, stderr=subprocess.STDOUT, env=_env(), cwd=REPO)
  if result.returncode != 0:
    with open(log_path) as log:
      tail = log.read()[-3000:]
    raise RuntimeError(f"{' '.join(args[:3])} failed (see {log_path}):\n{tail}")


# --- quality ------------------------------------------------------------------


def prepare_synthetic(work_dir: str) -> tuple[str, dict[str, Any]]:
  raw = os.path.join(work_dir, "raw")
  examples = os.path.join(work_dir, "examples_1024")
  if not os.path.exists(os.path.join(raw, "oracle.json")):
    users = [] if _USERS.value is None else [f"--users={_USERS.value}"]
    _run([sys.executable, "-m", "preprocessing.synthetic", f"--output_dir={raw}", *users,
          "--seed=0"], os.path.join(work_dir, "synthetic.log"))
  if not os.path.exists(os.path.join(examples, "summary.json")):
    _run([sys.executable, "-m", "preprocessing.build_examples",
          f"--input={raw}/impressions/*.csv", "--input_format=impressions",
          f"--behavior_log={raw}/behaviors/*.csv", f"--output_dir={examples}",
          "--max_seq_len=1024", "--min_history=0", "--eval_days=1"],
         os.path.join(work_dir, "ingestion.log"))
  with open(os.path.join(raw, "oracle.json")) as f:
    oracle = json.load(f)
  return examples, oracle


def prepare_movielens(work_dir: str) -> str:
  examples = os.path.join(work_dir, "movielens_1024")
  if not os.path.exists(os.path.join(examples, "summary.json")):
    _run([sys.executable, "-m", "preprocessing.build_examples",
          f"--input={_MOVIELENS_DIR.value}/ratings.csv", "--input_format=movielens",
          f"--output_dir={examples}", "--max_seq_len=1024", "--min_history=1",
          "--eval_days=365"],
         os.path.join(work_dir, "movielens_ingestion.log"))
  return examples


def train_variant(examples: str, out_dir: str, variant: str, seed: int, steps: int,
                  hparams: dict[str, Any]) -> dict[str, Any]:
  os.makedirs(out_dir, exist_ok=True)
  _run([sys.executable, "-m", "trainer.train",
        f"--train_files={examples}/train/*.tfrecord.gz",
        f"--eval_files={examples}/eval/*.tfrecord.gz",
        f"--model={variant}", "--max_seq_len=1024", f"--train_steps={steps}",
        f"--batch_size={_QUALITY_BATCH.value}", f"--seed={seed}", "--steps_per_epoch=100",
        f"--output_dir={out_dir}", f"--hparams={json.dumps(hparams)}", "--overwrite"],
       os.path.join(out_dir, "train.log"))
  with open(os.path.join(out_dir, "metrics.json")) as f:
    return json.load(f)


def quality(data_name: str, examples: str, work_dir: str) -> list[dict[str, Any]]:
  rows = []
  settings_sets = _ABLATION.value or ["defaults"]
  for setting in settings_sets:
    hparams = {**json.loads(_QUALITY_HPARAMS.value), **ABLATIONS[setting]}
    for variant in _VARIANTS.value:
      if variant == "din" and setting not in ("defaults", "before"):
        continue  # din has no long branch: the other sets change nothing there
      for seed in (int(s) for s in _SEEDS.value):
        start = time.perf_counter()
        metrics = train_variant(
            examples, os.path.join(work_dir, f"{data_name}_{setting}_{variant}_seed{seed}"),
            variant, seed, _QUALITY_STEPS.value, hparams,
        )
        row = {
            "data": data_name, "model": variant, "seed": seed, "setting": setting,
            **{k: metrics[k] for k in ("auc", "gauc", "logloss", "calibration",
                                       "examples_per_sec_train", "examples")},
            "train_steps_run": metrics.get("train_steps_run"),
            "best_step": (metrics.get("validation") or {}).get("best_step"),
            "wall_s": time.perf_counter() - start,
        }
        logging.info("%s", row)
        print(json.dumps(row), flush=True)
        rows.append(row)
  return rows


def hand_feature_baselines(raw_dir: str) -> list[dict[str, Any]]:
  """What a user would build by hand, on the same split (bench/synthetic_signal.py):
  logistic regression and GBDT on counts over the last 50 / the whole history,
  fitted on every train day, scored on the same eval day; one row per seed."""
  import importlib.util  # pylint: disable=g-import-not-at-top

  # bench/ is scripts, not a package: load the sibling by its path.
  spec = importlib.util.spec_from_file_location(
      "synthetic_signal", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                       "synthetic_signal.py"))
  synthetic_signal = importlib.util.module_from_spec(spec)
  sys.modules["synthetic_signal"] = synthetic_signal  # its dataclasses look it up
  spec.loader.exec_module(synthetic_signal)

  rows = []
  for seed in (int(s) for s in _SEEDS.value):
    study = synthetic_signal.run_study(raw_dir, seed=seed)
    for key, label in (("short/logistic", "LR, hand features of the last 50"),
                       ("short/gbdt", "GBDT, hand features of the last 50"),
                       ("whole/logistic", "LR, hand features of the whole history"),
                       ("whole/gbdt", "GBDT, hand features of the whole history"),
                       ("reachable/gbdt", REACHABLE_LABEL)):
      if key not in study["auc"]:
        continue  # reachable needs the generator's config in oracle.json
      rows.append({"data": "synthetic", "model": label, "seed": seed, "setting": "baseline",
                   "auc": study["auc"][key]})
  return rows


# The "reachable" line (issue 10): the whole-history hand features plus the
# generator's latent state that no log shows (counts over the candidate's true
# cluster, the item's true popularity); between what the history shows and
# the oracle, which also knows each user's interests.
REACHABLE_LABEL = "GBDT, hand + latent features (true cluster counts, item popularity): reachable"


# --- speed ---------------------------------------------------------------------


def random_batch(max_seq_len: int, seed: int):
  """Full-length histories, Zipf item ids over 100k items, as transformed slots."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from preprocessing import features  # pylint: disable=g-import-not-at-top
  from preprocessing import transforms  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  shape = (SPEED_BATCH, max_seq_len)
  items = np.minimum(rng.zipf(1.2, shape), 100_000).astype(np.int64)
  categories = items % 400 + 1
  return {
      features.USER_ID.name: tf.constant(np.arange(SPEED_BATCH), tf.int64),
      features.ITEM_ID.name: tf.constant(rng.integers(1, 100_000, SPEED_BATCH), tf.int64),
      features.CATEGORY_ID.name: tf.constant(rng.integers(1, 401, SPEED_BATCH), tf.int64),
      features.HIST_ITEM_IDS.name: tf.constant(items),
      features.HIST_CATEGORY_IDS.name: tf.constant(categories),
      transforms.HIST_TIME_GAP_BUCKETS: tf.constant(rng.integers(1, 32, shape), tf.int64),
      features.HIST_BEHAVIOR_TYPES.name: tf.constant(rng.integers(1, 5, shape), tf.int64),
      transforms.HIST_LENGTH: tf.constant(np.full(SPEED_BATCH, max_seq_len), tf.int64),
  }, tf.constant(rng.integers(0, 2, SPEED_BATCH), tf.int64)


def single_speed_run(settings: dict[str, Any]) -> dict[str, Any]:
  """One configuration in this process: train and inference examples/s, peak RSS."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from trainer import config  # pylint: disable=g-import-not-at-top
  from trainer import model as model_lib  # pylint: disable=g-import-not-at-top

  model_config = config.ModelConfig(
      model=settings["model"], max_seq_len=settings["max_seq_len"],
      embedding_dim=settings["d"], top_k=SPEED_TOP_K, num_bits=SPEED_NUM_BITS,
      jit_compile=settings["xla"],
  )
  features_batch, labels = random_batch(settings["max_seq_len"], seed=0)
  model = model_lib.build_model(model_config)
  model.compile(optimizer=tf.keras.optimizers.Adam(1e-3))
  steps = settings["steps"]

  # The step Keras' fit runs (forward, loss, gradients, Adam), without the
  # callback machinery; the median of per-step wall times after 2 warm-ups.
  @tf.function
  def train_step():
    return model.train_step((features_batch, labels))["loss"]

  @tf.function
  def infer():
    return model(features_batch, training=False)

  def median_ms(function) -> float:
    for _ in range(2):
      function().numpy()
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      function().numpy()
      times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)

  train_ms = median_ms(train_step)
  infer_ms = median_ms(infer)
  train_seconds, infer_seconds = train_ms / 1000, infer_ms / 1000
  return {
      **settings,
      "train_ms_per_step": 1000 * train_seconds,
      "train_examples_per_sec": SPEED_BATCH / train_seconds,
      "infer_ms_per_batch": 1000 * infer_seconds,
      "infer_examples_per_sec": SPEED_BATCH / infer_seconds,
      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  }


def speed(work_dir: str) -> list[dict[str, Any]]:
  rows = []
  for length in (int(v) for v in _SPEED_LENGTHS.value):
    for d in (int(v) for v in _SPEED_DIMS.value):
      for xla in (v == "on" for v in _SPEED_XLA.value):
        for model in _SPEED_MODELS.value:
          settings = {"model": model, "max_seq_len": length, "d": d, "xla": xla,
                      "steps": _SPEED_STEPS.value if length <= 1024
                      else max(3, _SPEED_STEPS.value // (2 if length <= 4096 else 3))}
          log_path = os.path.join(work_dir, f"speed_{model}_{length}_{d}_{xla}.log")
          try:
            _run([sys.executable, os.path.abspath(__file__),
                  f"--single_speed_config={json.dumps(settings)}"], log_path)
            with open(log_path) as f:
              line = [l for l in f.read().splitlines() if l.startswith("{")][-1]
            row = json.loads(line)
          except RuntimeError as error:  # e.g. out of memory: reported, not hidden
            row = {**settings, "error": str(error).splitlines()[-1][:200]}
          print(json.dumps(row), flush=True)
          rows.append(row)
  return rows


# --- report --------------------------------------------------------------------


def _quality_table(rows: list[dict[str, Any]], oracle: dict[str, Any] | None,
                   baselines: list[dict[str, Any]]) -> list[str]:
  lines = [
      "| data | settings | model | seeds | AUC (min-max) | GAUC | log loss | calibration "
      "| steps run | train examples/s |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  by_key: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
  for row in rows:
    by_key.setdefault((row["data"], row.get("setting", "defaults"), row["model"]), []).append(row)
  order = list(_VARIANTS.default)
  settings_order = list(ABLATIONS)
  for (data, setting, model), group in sorted(
      by_key.items(),
      key=lambda item: (item[0][0] != "synthetic", item[0][0],
                        settings_order.index(item[0][1]) if item[0][1] in settings_order else 99,
                        order.index(item[0][2]) if item[0][2] in order else len(order)),
  ):
    mean = lambda k: sum(r[k] for r in group) / len(group)  # noqa: E731
    spread = ""
    if len(group) > 1:
      spread = f" ({min(r['auc'] for r in group):.4f}-{max(r['auc'] for r in group):.4f})"
    steps = "/".join(str(r.get("train_steps_run", "-")) for r in group)
    lines.append(
        f"| {data} | {setting} | {model} | {len(group)} | {mean('auc'):.4f}{spread} | "
        f"{mean('gauc'):.4f} | {mean('logloss'):.4f} | {mean('calibration'):.3f} | {steps} | "
        f"{mean('examples_per_sec_train'):,.0f} |"
    )
  by_label: dict[str, list[float]] = {}
  for row in baselines:
    by_label.setdefault(row["model"], []).append(row["auc"])
  for label, values in by_label.items():
    kind = "hand + latent" if label == REACHABLE_LABEL else "hand features"
    lines.append(
        f"| synthetic | {kind} | {label} | {len(values)} | "
        f"{sum(values) / len(values):.4f} ({min(values):.4f}-{max(values):.4f}) "
        "| - | - | - | - | - |"
    )
  if oracle:
    lines.append(
        f"| synthetic | - | oracle (true click probability) | - | "
        f"{oracle['oracle_auc_eval']:.4f} | - | - | - | - | - |"
    )
  eta = by_key.get(("synthetic", "defaults", "eta"))
  din = by_key.get(("synthetic", "defaults", "din"))
  gbdt = by_label.get("GBDT, hand features of the whole history")
  if eta:
    eta_auc = sum(r["auc"] for r in eta) / len(eta)
    notes = []
    if din:
      notes.append(f"eta - din = {eta_auc - sum(r['auc'] for r in din) / len(din):+.4f}")
    if gbdt:
      notes.append(f"eta - whole-history GBDT = {eta_auc - sum(gbdt) / len(gbdt):+.4f}")
    reachable = by_label.get(REACHABLE_LABEL)
    if reachable:
      notes.append(f"reachable - eta = {sum(reachable) / len(reachable) - eta_auc:.4f}")
    if oracle:
      notes.append(f"oracle - eta = {oracle['oracle_auc_eval'] - eta_auc:.4f}")
    lines += ["", "Synthetic, defaults, mean over seeds: " + "; ".join(notes) + "."]
  return lines


def _speed_table(rows: list[dict[str, Any]]) -> list[str]:
  lines = [
      "| L | d | XLA | model | train ms/step | train examples/s | infer ms/batch | "
      "infer examples/s | peak RSS MiB |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for r in rows:
    if "error" in r:
      lines.append(f"| {r['max_seq_len']} | {r['d']} | {r['xla']} | {r['model']} | "
                   f"failed: {r['error']} | | | | |")
      continue
    lines.append(
        f"| {r['max_seq_len']} | {r['d']} | {'on' if r['xla'] else 'off'} | {r['model']} | "
        f"{r['train_ms_per_step']:.0f} | {r['train_examples_per_sec']:,.0f} | "
        f"{r['infer_ms_per_batch']:.1f} | {r['infer_examples_per_sec']:,.0f} | "
        f"{r['peak_rss_mib']:,.0f} |"
    )
  return lines


def _plot(rows: list[dict[str, Any]], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  dims = sorted({r["d"] for r in rows})
  figure, axes = plt.subplots(1, 2 * len(dims), figsize=(6 * 2 * len(dims), 4.5), squeeze=False)
  column = 0
  for d in dims:
    for xla in (True, False):
      axis = axes[0][column]
      column += 1
      for model in sorted({r["model"] for r in rows}):
        points = sorted(
            (r["max_seq_len"], r["train_ms_per_step"]) for r in rows
            if r["d"] == d and r["xla"] == xla and r["model"] == model and "error" not in r
        )
        if points:
          axis.plot(*zip(*points), marker="o", label=model)
      axis.set_xscale("log")
      axis.set_yscale("log")
      axis.set_xlabel("max_seq_len L")
      axis.set_ylabel("training ms per step (batch 256)")
      axis.set_title(f"d={d}, XLA {'on' if xla else 'off'}")
      axis.grid(True, which="both", alpha=0.3)
      axis.legend()
  figure.tight_layout()
  figure.savefig(path, dpi=100)


def main(argv):
  del argv
  if _SINGLE.value:
    print(json.dumps(single_speed_run(json.loads(_SINGLE.value))), flush=True)
    return
  from preprocessing import environment  # pylint: disable=g-import-not-at-top

  environment.check_environment(import_tensorflow=False)
  work_dir = _WORK_DIR.value
  os.makedirs(work_dir, exist_ok=True)
  os.makedirs(_RESULTS_DIR.value, exist_ok=True)
  json_path = os.path.join(_RESULTS_DIR.value, "train.json")
  previous = {}
  if os.path.exists(json_path):
    with open(json_path) as f:
      previous = json.load(f)
  result: dict[str, Any] = {
      "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
      "quality": previous.get("quality", []),
      "quality_settings": previous.get("quality_settings", {}),
      "oracle": previous.get("oracle"),
      "baselines": previous.get("baselines", []),
      "speed": previous.get("speed", []),
  }
  key = lambda r: (r["data"], r.get("setting", "defaults"), r["model"], r["seed"])  # noqa: E731
  for path in _MERGE.value:
    with open(path) as f:
      other = json.load(f)
    if other.get("quality_settings", {}).get("steps") not in (None, result["quality_settings"].get("steps")):
      raise app.UsageError(f"{path} has other quality settings")
    theirs = {key(r) for r in other["quality"]}
    result["quality"] = [r for r in result["quality"] if key(r) not in theirs] + other["quality"]
    result["oracle"] = result["oracle"] or other.get("oracle")
    seeds = {r["seed"] for r in other.get("baselines", [])}
    result["baselines"] = [r for r in result["baselines"] if r["seed"] not in seeds] + \
        other.get("baselines", [])
    if not result["quality_settings"]:
      result["quality_settings"] = other.get("quality_settings", {})
  if _PART.value in ("all", "quality"):
    rows = []
    if _SYNTHETIC.value:
      examples, oracle = prepare_synthetic(work_dir)
      fresh = hand_feature_baselines(os.path.join(work_dir, "raw"))
      seeds = {r["seed"] for r in fresh}
      result["baselines"] = [r for r in result["baselines"] if r["seed"] not in seeds] + fresh
      result["oracle"] = oracle
      rows = quality("synthetic", examples, work_dir)
    if _MOVIELENS.value:
      rows += quality("movielens", prepare_movielens(work_dir), work_dir)
    settings = {
        "steps": _QUALITY_STEPS.value, "batch_size": _QUALITY_BATCH.value,
        "hparams": json.loads(_QUALITY_HPARAMS.value), "max_seq_len": 1024,
        # Rows on other data (another user count) are not comparable.
        "synthetic_users": (result["oracle"] or {}).get("config", {}).get("users"),
    }
    # Runs with other settings are dropped; same settings, other seeds, kept.
    kept = []
    if {k: v for k, v in result["quality_settings"].items() if k != "seeds"} == settings:
      new_keys = {key(r) for r in rows}
      kept = [r for r in result["quality"] if key(r) not in new_keys]
    rows = kept + rows
    settings["seeds"] = sorted({r["seed"] for r in rows})
    result.update(quality=rows, quality_settings=settings)
  if _PART.value in ("all", "speed"):
    result["speed"] = speed(work_dir)
  with open(json_path, "w") as f:
    json.dump(result, f, indent=2)
  lines = ["# Training benchmarks: quality per variant, speed vs history length", ""]
  if result["quality"]:
    s = result["quality_settings"]
    lines += [
        f"Quality: `python bench/train_bench.py --part=quality` -- {s.get('steps')} steps of "
        f"batch {s.get('batch_size')}, max_seq_len 1024, seeds {s.get('seeds')}, extra "
        f"settings {s.get('hparams')}; synthetic data of {s.get('synthetic_users')} users "
        "(seed 0); eval = the last day (synthetic) / last 365 days "
        "(MovieLens), split by time by the ingestion job.", "",
        *_quality_table(result["quality"], result["oracle"], result["baselines"]), "",
    ]
  if result["speed"]:
    lines += [
        f"Speed: `python bench/train_bench.py --part=speed` -- batch {SPEED_BATCH}, k = "
        f"{SPEED_TOP_K}, m = {SPEED_NUM_BITS}, every history position real, "
        f"{result['machine']['cpus']} CPU cores, one subprocess per row (peak RSS is the "
        "whole process); times are medians of per-step wall times after 2 warm-up steps "
        "(10 steps at L <= 1024, 5 at 4,096, 3 at 10,000). XLA = the retrieval/attention "
        "functions under tf.function(jit_compile=True).", "",
        *_speed_table(result["speed"]), "",
        "![training time vs L](train_speed.png)", "",
    ]
    _plot(result["speed"], os.path.join(_RESULTS_DIR.value, "train_speed.png"))
  report = "\n".join(lines)
  print(report)
  with open(os.path.join(_RESULTS_DIR.value, "train.md"), "w") as f:
    f.write(report)


if __name__ == "__main__":
  app.run(main)
