r"""Builds point-in-time long-sequence TFRecords from raw logs with Beam.

  python -m preprocessing.build_examples --input=GLOB \
      --input_format=behavior|impressions|movielens [--behavior_log=GLOB] \
      [--movies=GLOB] --output_dir=DIR --max_seq_len=1024 --neg_per_pos=1 \
      --min_history=1 --eval_days=1 [--seed=0] [beam pipeline args]

Writes OUTPUT_DIR/train/*.tfrecord.gz, OUTPUT_DIR/eval/*.tfrecord.gz,
OUTPUT_DIR/rejected/*.jsonl (dead letters) and OUTPUT_DIR/summary.json, checks
that rows_read == rows_valid + rows_rejected and prints the summary. The job
writes into a fresh directory beside OUTPUT_DIR and moves it into place only
when it succeeded; a non-empty OUTPUT_DIR is refused unless --overwrite. It
fails (exit 1, one line on stderr, nothing written) on a glob matching
nothing, bad settings, an input file that cannot be read whole (a truncated
.gz), no train or no eval examples (unless --allow_empty_split) and, with
--min_volume_ratio, an eval day far smaller than the earlier days.

Arguments this binary does not define go to Beam's PipelineOptions unchanged
(e.g. --runner=DataflowRunner --project=... --region=... --temp_location=gs://
...). Without a --runner the job runs on the DirectRunner with
--direct_running_mode=multi_processing --direct_num_workers=2.
"""

from __future__ import annotations

import json
import posixpath
import sys
from typing import Optional, Sequence

from absl import app
from absl import flags
from absl import logging

from preprocessing import environment
from preprocessing import features
from preprocessing import flag_parsing
from preprocessing import ingest_parse

FLAGS = flags.FLAGS

def _define_flags() -> None:
  # Defined only when run as a program, so that other modules (tests,
  # other entry points) can import this one: absl flags are global.
  flags.DEFINE_list(
      "input", None,
      "Glob(s) of the main input: the behaviour log (behavior), the impression "
      "log (impressions) or ratings.csv (movielens). CSV or Parquet; .gz is "
      "decompressed.",
  )
  flags.DEFINE_enum(
      "input_format", None, list(ingest_parse.INPUT_FORMATS), "Format of --input."
  )
  flags.DEFINE_list(
      "behavior_log", None,
      "Glob(s) of the behaviour log for the histories (impressions only).",
  )
  flags.DEFINE_list(
      "movies", None,
      "Glob(s) of movies.csv (movielens only); default: movies.csv in the "
      "directory of the first --input glob.",
  )
  flags.DEFINE_enum(
      "file_type", "auto", ["auto", "csv", "parquet"],
      "Input file type; auto: Parquet iff every glob ends in .parquet.",
  )
  flags.DEFINE_string("output_dir", None, "Output directory.")
  flags.DEFINE_integer(
      "max_seq_len", features.DEFAULT_MAX_SEQ_LEN,
      "History length kept (most recent behaviours).",
  )
  flags.DEFINE_integer(
      "neg_per_pos", 1, "Negatives sampled per positive (behavior only)."
  )
  flags.DEFINE_integer(
      "min_history", 1, "Skip impressions with fewer earlier behaviours."
  )
  flags.DEFINE_integer(
      "eval_days", 1, "The last this many UTC days of impressions are eval."
  )
  flags.DEFINE_integer("seed", 0, "Negative sampling seed.")
  flags.DEFINE_integer(
      "chunk_seconds", features.SECONDS_PER_DAY,
      "Time chunk of the (user, chunk) keys that spread a heavy user's work.",
  )
  flags.DEFINE_integer(
      "max_timestamp", None,
      "Latest valid timestamp (Unix seconds); default: one day after now.",
  )
  flags.DEFINE_bool(
      "overwrite", False,
      "Replace a non-empty --output_dir whole (otherwise it is refused).",
  )
  flags.DEFINE_bool(
      "allow_empty_split", False,
      "Succeed even with no train or no eval examples (otherwise an error).",
  )
  flags.DEFINE_float(
      "min_volume_ratio", 0.0,
      "Fail when an eval day's behaviours, impressions or examples fall below "
      "this fraction of the median of the earlier days (0: no check).",
  )

def _default_movies(input_globs: Sequence[str]) -> list[str]:
  return [posixpath.join(posixpath.dirname(input_globs[0]), "movies.csv")]


def main(argv: Sequence[str]) -> Optional[int]:
  environment.check_environment()
  # Beam loads here, not at import: --help and a flag mistake answer at once.
  from preprocessing import ingest_job  # pylint: disable=g-import-not-at-top
  from preprocessing import ingest_read  # pylint: disable=g-import-not-at-top

  for name in ("input", "input_format", "output_dir"):
    if getattr(FLAGS, name) is None:
      raise app.UsageError(f"--{name} is required")
  movies: Optional[list[str]] = None
  if FLAGS.input_format == "movielens":
    movies = FLAGS.movies or _default_movies(FLAGS.input)
  try:
    config = ingest_job.IngestionConfig(
        input_format=FLAGS.input_format,
        input_patterns=tuple(FLAGS.input),
        behavior_patterns=tuple(FLAGS.behavior_log or ()),
        movies_patterns=tuple(movies or ()),
        file_type=FLAGS.file_type,
        max_seq_len=FLAGS.max_seq_len,
        min_history=FLAGS.min_history,
        eval_days=FLAGS.eval_days,
        chunk_seconds=FLAGS.chunk_seconds,
        neg_per_pos=FLAGS.neg_per_pos,
        seed=FLAGS.seed,
        max_timestamp=FLAGS.max_timestamp,
        min_volume_ratio=FLAGS.min_volume_ratio,
    )
  except (ValueError, TypeError) as error:
    print(f"build_examples: error: {error}", file=sys.stderr)
    return 1
  beam_args = ingest_job.beam_args_with_defaults(argv[1:])
  logging.info("Beam args: %s", beam_args)
  try:
    summary = ingest_job.run(
        config, FLAGS.output_dir, beam_args, overwrite=FLAGS.overwrite,
        allow_empty_split=FLAGS.allow_empty_split,
    )
  except ingest_read.IngestionError as error:
    # A glob matching nothing, an occupied or unwritable output_dir, a
    # corrupt input file, no train/eval examples: one line, no traceback.
    print(f"build_examples: error: {error}", file=sys.stderr)
    return 1
  print(json.dumps(summary, indent=2, sort_keys=True))
  return 0


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=flag_parsing.parse_known_flags)
