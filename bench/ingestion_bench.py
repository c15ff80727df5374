r"""Ingestion throughput: the Beam job vs a single-process pure-Python reference.

  python bench/ingestion_bench.py [--users=3000 --max_events_per_user=1000
      --max_seq_len=1024 --workers=2]

Generates a synthetic impressions-format log (preprocessing.synthetic; about
1M behaviour events at the defaults) under bench/scratch/, then runs, each in
its own subprocess so that memory is measured per variant:

* beam: preprocessing.ingest_job.run (what the CLI runs) on the DirectRunner,
  multi_processing with --workers workers (the CLI's default);
* beam_in_memory: the same on the DirectRunner in one process;
* reference: one Python process, no Beam: parse every row with
  preprocessing.ingest_parse, group by user in dicts, sort, walk each user's
  events once with a deque of max_seq_len, write GZIP TFRecords.

It checks the two produce the same examples (a random sample compared field
by field, and equal counts), then prints and saves a table of wall time,
rows/s, examples/s, peak resident memory of the variant's whole process tree
(sampled every 0.2 s with psutil) and bytes per example on disk, to
bench/results/ingestion.md and .json.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import json
import os
import random
import subprocess
import sys
import threading
import time
from typing import Any

from absl import app
from absl import flags
import psutil

from preprocessing import environment
from preprocessing import ingest_parse
from preprocessing import synthetic_world
from preprocessing import synthetic_writer

_USERS = flags.DEFINE_integer("users", 3000, "Synthetic users.")
_MAX_EVENTS = flags.DEFINE_integer(
    "max_events_per_user", 1000, "Synthetic max behaviours per user."
)
_MAX_SEQ_LEN = flags.DEFINE_integer("max_seq_len", 1024, "History length.")
_WORKERS = flags.DEFINE_integer("workers", 2, "DirectRunner workers.")
_REPEATS = flags.DEFINE_integer(
    "repeats", 2,
    "Runs per variant, interleaved; the table keeps the fastest (the machine "
    "may be shared) and the highest peak memory.",
)
_SAMPLE = flags.DEFINE_integer("sample", 2000, "Examples compared field by field.")
_SCRATCH = flags.DEFINE_string(
    "scratch_dir", "bench/scratch/ingestion", "Generated data and outputs."
)
_RESULTS = flags.DEFINE_string("results_dir", "bench/results", "Tables go here.")
_MODE = flags.DEFINE_enum(
    "mode", "compare", ["compare", "beam", "beam_in_memory", "reference"],
    "compare runs the other two as subprocesses.",
)


def _config(data_dir: str, max_seq_len: int):
  # Beam (seconds) loads in the runs that use it: --help answers at once.
  from preprocessing import ingest_job  # pylint: disable=g-import-not-at-top

  return ingest_job.IngestionConfig(
      input_format="impressions",
      input_patterns=(os.path.join(data_dir, "impressions", "*.csv"),),
      behavior_patterns=(os.path.join(data_dir, "behaviors", "*.csv"),),
      max_seq_len=max_seq_len,
      min_history=1,
      eval_days=1,
  )


def run_beam(
    data_dir: str, out_dir: str, max_seq_len: int, workers: int, mode: str
) -> dict:
  # Lazy as in _config().
  from preprocessing import ingest_job  # pylint: disable=g-import-not-at-top

  summary = ingest_job.run(
      _config(data_dir, max_seq_len), out_dir,
      [f"--direct_running_mode={mode}", f"--direct_num_workers={workers}"],
  )
  return {
      "rows_read": summary["rows_read"],
      "examples": summary["examples_train"] + summary["examples_eval"],
  }


def run_reference(data_dir: str, out_dir: str, max_seq_len: int) -> dict:
  """Single process: dicts per user, one sort, one walk with a deque."""
  # TensorFlow (~5 s) and the Beam module ingest_histories load in the run
  # that uses them: --help answers at once.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  from preprocessing import ingest_histories  # pylint: disable=g-import-not-at-top

  config = _config(data_dir, max_seq_len)
  bounds = config.timestamp_bounds()
  behaviors = collections.defaultdict(list)
  impressions = collections.defaultdict(list)
  rows = 0
  for pattern, kind, target in (
      (config.behavior_patterns[0], ingest_parse.BEHAVIOR_ROWS, behaviors),
      (config.input_patterns[0], ingest_parse.IMPRESSION_ROWS, impressions),
  ):
    for path in sorted(glob.glob(pattern)):
      with open(path, "rb") as handle:
        for line in handle:
          event = ingest_parse.parse_line(line.rstrip(b"\n"), path, kind, bounds)
          if isinstance(event, ingest_parse.Header):
            continue
          rows += 1
          if not isinstance(event, ingest_parse.Reject):
            target[event.user_id].append(event)
  latest = max(i.timestamp for user in impressions.values() for i in user)
  eval_start = ingest_histories.eval_start_for(latest, config.eval_days)
  os.makedirs(out_dir, exist_ok=True)
  options = tf.io.TFRecordOptions(compression_type="GZIP")
  writers = {
      split: tf.io.TFRecordWriter(
          os.path.join(out_dir, f"{split}.tfrecord.gz"), options
      )
      for split in ("train", "eval")
  }
  examples = 0
  for user, user_impressions in impressions.items():
    history = sorted(
        behaviors.get(user, ()),
        key=lambda b: (b.timestamp, b.item_id, b.category_id, b.behavior_type),
    )
    window = collections.deque(maxlen=max_seq_len)
    seen = 0
    position = 0
    for imp in sorted(user_impressions, key=lambda i: i.timestamp):
      while position < len(history) and history[position].timestamp < imp.timestamp:
        window.append(history[position])
        position += 1
        seen += 1
      if seen < config.min_history:
        continue
      example = tf.train.Example()
      feature = example.features.feature
      for name, value in (
          ("user_id", imp.user_id), ("item_id", imp.item_id),
          ("category_id", imp.category_id), ("timestamp", imp.timestamp),
          ("label", imp.label),
      ):
        feature[name].int64_list.value.append(value)
      feature["hist_item_ids"].int64_list.value.extend(b.item_id for b in window)
      feature["hist_category_ids"].int64_list.value.extend(
          b.category_id for b in window
      )
      feature["hist_timestamps"].int64_list.value.extend(
          b.timestamp for b in window
      )
      feature["hist_behavior_types"].int64_list.value.extend(
          b.behavior_type for b in window
      )
      split = "eval" if imp.timestamp >= eval_start else "train"
      writers[split].write(example.SerializeToString())
      examples += 1
  for writer in writers.values():
    writer.close()
  return {"rows_read": rows, "examples": examples}


def _read_examples(pattern: str) -> dict[tuple, tuple]:
  # Lazy as in run_reference().
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  found = {}
  files = sorted(glob.glob(pattern))
  for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
    f = tf.train.Example.FromString(record.numpy()).features.feature
    key = tuple(f[n].int64_list.value[0] for n in (
        "user_id", "timestamp", "item_id", "category_id", "label"))
    found[key] = found.get(key, ()) + (tuple(
        tuple(f[n].int64_list.value) for n in (
            "hist_item_ids", "hist_category_ids", "hist_timestamps",
            "hist_behavior_types")),)
  return found


def _disk_bytes(pattern: str) -> int:
  return sum(os.path.getsize(p) for p in glob.glob(pattern))


def _measure(argv: list[str]) -> dict[str, Any]:
  """Runs a subprocess; wall time and peak RSS summed over its process tree."""
  env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2",
             PYTHONPATH=os.getcwd())
  start = time.perf_counter()
  proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
  root = psutil.Process(proc.pid)
  peak = 0
  done = threading.Event()

  def sample():
    nonlocal peak
    while not done.is_set():
      try:
        tree = [root] + root.children(recursive=True)
        rss = 0
        for p in tree:
          try:
            rss += p.memory_info().rss
          except psutil.Error:
            pass
        peak = max(peak, rss)
      except psutil.Error:
        pass
      time.sleep(0.2)

  sampler = threading.Thread(target=sample, daemon=True)
  sampler.start()
  stdout, _ = proc.communicate()
  wall = time.perf_counter() - start
  done.set()
  sampler.join()
  if proc.returncode:
    raise RuntimeError(f"{argv} failed with {proc.returncode}")
  result = json.loads(stdout.decode().strip().splitlines()[-1])
  result.update(wall_s=wall, peak_rss_mib=peak / 2**20)
  return result


def compare() -> None:

  scratch = os.path.abspath(_SCRATCH.value)
  synth = synthetic_world.SyntheticConfig(
      users=_USERS.value, seed=0, min_events_per_user=50,
      max_events_per_user=_MAX_EVENTS.value, days=30, impression_days=5,
      eval_days=1,
  )
  data_dir = os.path.join(scratch, "data")
  stamp = os.path.join(data_dir, "config.json")
  wanted = json.dumps(dataclasses.asdict(synth), sort_keys=True)
  if not os.path.exists(stamp) or open(stamp).read() != wanted:
    started = time.perf_counter()
    oracle = synthetic_writer.generate_to_dir(synth, data_dir)
    with open(stamp, "w") as handle:
      handle.write(wanted)
    print(f"generated {oracle['behaviors']} behaviours in "
          f"{time.perf_counter() - started:.0f} s")
  runs = {}
  for _ in range(_REPEATS.value):
    for mode in ("beam", "beam_in_memory", "reference"):
      out_dir = os.path.join(scratch, f"out_{mode}")
      subprocess.run(["rm", "-rf", out_dir], check=True)
      run = _measure([
          sys.executable, __file__, f"--mode={mode}", f"--scratch_dir={scratch}",
          f"--max_seq_len={_MAX_SEQ_LEN.value}", f"--workers={_WORKERS.value}",
      ])
      print(mode, run)
      if mode in runs:
        run["wall_s"] = min(run["wall_s"], runs[mode]["wall_s"])
        run["peak_rss_mib"] = max(run["peak_rss_mib"], runs[mode]["peak_rss_mib"])
      runs[mode] = run

  beam_out = os.path.join(scratch, "out_beam", "*", "*.tfrecord.gz")
  in_memory_out = os.path.join(scratch, "out_beam_in_memory", "*", "*.tfrecord.gz")
  ref_out = os.path.join(scratch, "out_reference", "*.tfrecord.gz")
  for mode in ("beam", "beam_in_memory"):
    assert runs[mode]["examples"] == runs["reference"]["examples"], runs
    assert runs[mode]["rows_read"] == runs["reference"]["rows_read"], runs
  beam_examples, ref_examples = _read_examples(beam_out), _read_examples(ref_out)
  assert beam_examples.keys() == ref_examples.keys()
  sample = random.Random(0).sample(sorted(beam_examples), min(_SAMPLE.value, len(beam_examples)))
  mismatches = sum(
      sorted(beam_examples[k]) != sorted(ref_examples[k]) for k in sample
  )
  assert mismatches == 0, f"{mismatches} of {len(sample)} sampled examples differ"

  names = {
      "beam": f"Beam DirectRunner multi_processing x{_WORKERS.value}",
      "beam_in_memory": "Beam DirectRunner in_memory (1 process)",
      "reference": "single-process Python reference",
  }
  rows = []
  for mode, files in (("beam", beam_out), ("beam_in_memory", in_memory_out),
                      ("reference", ref_out)):
    run = runs[mode]
    rows.append({
        "variant": names[mode],
        "rows_read": run["rows_read"],
        "examples": run["examples"],
        "wall_s": round(run["wall_s"], 1),
        "rows_per_s": round(run["rows_read"] / run["wall_s"]),
        "examples_per_s": round(run["examples"] / run["wall_s"]),
        "time_vs_reference": round(run["wall_s"] / runs["reference"]["wall_s"], 2),
        "peak_rss_mib": round(run["peak_rss_mib"]),
        "bytes_per_example": round(_disk_bytes(files) / run["examples"]),
    })
  header = list(rows[0])
  lines = [
      f"# Ingestion benchmark (max_seq_len={_MAX_SEQ_LEN.value}, "
      f"{os.cpu_count()} CPUs, best of {_REPEATS.value} runs, sampled "
      f"{len(sample)} examples: identical)",
      "",
      "| " + " | ".join(header) + " |",
      "|" + "---|" * len(header),
  ] + ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
  table = "\n".join(lines)
  print(table)
  os.makedirs(_RESULTS.value, exist_ok=True)
  with open(os.path.join(_RESULTS.value, "ingestion.md"), "w") as handle:
    handle.write(table + "\n\nWall time includes process start-up and imports "
                 "(Beam workers import TensorFlow). Peak RSS sums the whole "
                 "process tree. Bytes per example: GZIP TFRecord on disk.\n")
  with open(os.path.join(_RESULTS.value, "ingestion.json"), "w") as handle:
    json.dump({"max_seq_len": _MAX_SEQ_LEN.value, "synthetic": json.loads(wanted),
               "repeats": _REPEATS.value, "rows": rows,
               "sample_checked": len(sample)}, handle, indent=2)


def main(argv: list[str]) -> None:
  del argv

  environment.check_environment()
  data_dir = os.path.join(os.path.abspath(_SCRATCH.value), "data")
  out_dir = os.path.join(os.path.abspath(_SCRATCH.value), f"out_{_MODE.value}")
  if _MODE.value == "beam":
    print(json.dumps(run_beam(data_dir, out_dir, _MAX_SEQ_LEN.value,
                              _WORKERS.value, "multi_processing")))
  elif _MODE.value == "beam_in_memory":
    print(json.dumps(run_beam(data_dir, out_dir, _MAX_SEQ_LEN.value, 1, "in_memory")))
  elif _MODE.value == "reference":
    print(json.dumps(run_reference(data_dir, out_dir, _MAX_SEQ_LEN.value)))
  else:
    compare()


if __name__ == "__main__":
  app.run(main)
