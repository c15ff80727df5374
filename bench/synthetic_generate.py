"""Speed and peak memory of the synthetic log generator at several scales.

Each scale runs in its own subprocess (so its peak RSS is its own), generates
in memory, then writes the CSV files under bench/scratch/. Prints a table and
saves bench/results/synthetic_generate.md and .json.

Usage:
  python bench/synthetic_generate.py
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time

from absl import app
from absl import flags

from preprocessing import environment
from preprocessing import flag_parsing
from preprocessing import synthetic_world
from preprocessing import synthetic_writer

SCALES = {
    "demo (defaults)": {},
    "1M events": {"users": 5000},
    "long histories 5k-20k": {"users": 100, "min_events_per_user": 5000,
                              "max_events_per_user": 20000},
    "one user, 200k events": {"users": 1, "min_events_per_user": 200_000,
                              "max_events_per_user": 200_000,
                              "impression_days": 2,
                              "impressions_per_user_day": 200.0},
}


def _measure(overrides: dict, output_dir: str) -> dict:
  """Runs in the worker process: generate, write, report."""
  config = synthetic_world.SyntheticConfig.from_dict(overrides)
  started = time.perf_counter()
  logs = synthetic_world.generate(config)
  generated = time.perf_counter()
  synthetic_writer.write_logs(config, logs, output_dir)
  written = time.perf_counter()
  disk = sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(output_dir) for name in names)
  return {
      "users": config.users,
      "behaviors": int(logs.behavior_timestamp.size),
      "impressions": int(logs.impression_timestamp.size),
      "generate_seconds": generated - started,
      "write_seconds": written - generated,
      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "disk_mib": disk / 2**20,
  }


def _define_flags():
  flags.DEFINE_string("worker_scale", None, "Internal: run one scale.")
  flags.DEFINE_string("scratch_dir", "bench/scratch/synthetic_generate",
                      "Where the generated files go (deleted after).")
  flags.DEFINE_string("results_dir", "bench/results", "Where to save.")


def main(argv):
  flag_parsing.refuse_arguments(argv)
  environment.check_environment(import_tensorflow=False)
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  if FLAGS.worker_scale is not None:
    print(json.dumps(_measure(SCALES[FLAGS.worker_scale], FLAGS.scratch_dir)))
    return
  rows = []
  for name in SCALES:
    shutil.rmtree(FLAGS.scratch_dir, ignore_errors=True)
    done = subprocess.run(
        [sys.executable, __file__, f"--worker_scale={name}",
         f"--scratch_dir={FLAGS.scratch_dir}"],
        capture_output=True, text=True, check=True)
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["scale"] = name
    rows.append(row)
  shutil.rmtree(FLAGS.scratch_dir, ignore_errors=True)
  lines = [
      "| scale | users | behaviours | impressions | generate s | write s "
      "| behaviours/s (generate + write) | peak RSS MiB | CSV MiB |",
      "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
  ]
  for r in rows:
    total = r["generate_seconds"] + r["write_seconds"]
    lines.append(
        f"| {r['scale']} | {r['users']} | {r['behaviors']} | "
        f"{r['impressions']} | {r['generate_seconds']:.2f} | "
        f"{r['write_seconds']:.2f} | {r['behaviors'] / total:,.0f} | "
        f"{r['peak_rss_mib']:.0f} | {r['disk_mib']:.1f} |")
  table = "\n".join(lines)
  print(table)
  os.makedirs(FLAGS.results_dir, exist_ok=True)
  stem = os.path.join(FLAGS.results_dir, "synthetic_generate")
  with open(stem + ".md", "w") as f:
    f.write("# Synthetic log generator: speed and peak memory\n\n"
            f"`python bench/synthetic_generate.py`, {os.cpu_count()} CPU "
            "cores; one subprocess per scale (peak RSS includes Python, "
            "numpy and pandas).\n\n")
    f.write(table + "\n")
  with open(stem + ".json", "w") as f:
    json.dump(rows, f, indent=2, sort_keys=True)
    f.write("\n")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
