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
from preprocessing import raw_logs

def _define_flags() -> None:
  # Defined only when run as a program, so that other modules (tests,
  # other entry points) can import this one: absl flags are global.
  global _INPUT, _INPUT_FORMAT, _BEHAVIOR_LOG, _MOVIES, _FILE_TYPE, _OUTPUT_DIR, _MAX_SEQ_LEN, _NEG_PER_POS, _MIN_HISTORY, _EVAL_DAYS, _SEED, _CHUNK_SECONDS, _MAX_TIMESTAMP, _OVERWRITE, _ALLOW_EMPTY_SPLIT, _MIN_VOLUME_RATIO
  _INPUT = flags.DEFINE_list(
      "input", None,
      "Glob(s) of the main input: the behaviour log (behavior), the impression "
      "log (impressions) or ratings.csv (movielens). CSV or Parquet; .gz is "
      "decompressed.",
  )
  _INPUT_FORMAT = flags.DEFINE_enum(
      "input_format", None, list(raw_logs.INPUT_FORMATS), "Format of --input."
  )
  _BEHAVIOR_LOG = flags.DEFINE_list(
      "behavior_log", None,
      "Glob(s) of the behaviour log for the histories (impressions only).",
  )
  _MOVIES = flags.DEFINE_list(
      "movies", None,
      "Glob(s) of movies.csv (movielens only); default: movies.csv in the "
      "directory of the first --input glob.",
  )
  _FILE_TYPE = flags.DEFINE_enum(
      "file_type", "auto", ["auto", "csv", "parquet"],
      "Input file type; auto: Parquet iff every glob ends in .parquet.",
  )
  _OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Output directory.")
  _MAX_SEQ_LEN = flags.DEFINE_integer(
      "max_seq_len", features.DEFAULT_MAX_SEQ_LEN,
      "History length kept (most recent behaviours).",
  )
  _NEG_PER_POS = flags.DEFINE_integer(
      "neg_per_pos", 1, "Negatives sampled per positive (behavior only)."
  )
  _MIN_HISTORY = flags.DEFINE_integer(
      "min_history", 1, "Skip impressions with fewer earlier behaviours."
  )
  _EVAL_DAYS = flags.DEFINE_integer(
      "eval_days", 1, "The last this many UTC days of impressions are eval."
  )
  _SEED = flags.DEFINE_integer("seed", 0, "Negative sampling seed.")
  _CHUNK_SECONDS = flags.DEFINE_integer(
      "chunk_seconds", 86_400,
      "Time chunk of the (user, chunk) keys that spread a heavy user's work.",
  )
  _MAX_TIMESTAMP = flags.DEFINE_integer(
      "max_timestamp", None,
      "Latest valid timestamp (Unix seconds); default: one day after now.",
  )
  _OVERWRITE = flags.DEFINE_bool(
      "overwrite", False,
      "Replace a non-empty --output_dir whole (otherwise it is refused).",
  )
  _ALLOW_EMPTY_SPLIT = flags.DEFINE_bool(
      "allow_empty_split", False,
      "Succeed even with no train or no eval examples (otherwise an error).",
  )
  _MIN_VOLUME_RATIO = flags.DEFINE_float(
      "min_volume_ratio", 0.0,
      "Fail when an eval day's behaviours, impressions or examples fall below "
      "this fraction of the median of the earlier days (0: no check).",
  )

def _default_movies(input_globs: Sequence[str]) -> list[str]:
  return [posixpath.join(posixpath.dirname(input_globs[0]), "movies.csv")]


def main(argv: Sequence[str]) -> Optional[int]:
  environment.check_environment()
  from preprocessing import ingestion  # pylint: disable=g-import-not-at-top

  for flag in (_INPUT, _INPUT_FORMAT, _OUTPUT_DIR):
    if flag.value is None:
      raise app.UsageError(f"--{flag.name} is required")
  movies: Optional[list[str]] = None
  if _INPUT_FORMAT.value == "movielens":
    movies = _MOVIES.value or _default_movies(_INPUT.value)
  try:
    config = ingestion.IngestionConfig(
        input_format=_INPUT_FORMAT.value,
        input_patterns=tuple(_INPUT.value),
        behavior_patterns=tuple(_BEHAVIOR_LOG.value or ()),
        movies_patterns=tuple(movies or ()),
        file_type=_FILE_TYPE.value,
        max_seq_len=_MAX_SEQ_LEN.value,
        min_history=_MIN_HISTORY.value,
        eval_days=_EVAL_DAYS.value,
        chunk_seconds=_CHUNK_SECONDS.value,
        neg_per_pos=_NEG_PER_POS.value,
        seed=_SEED.value,
        max_timestamp=_MAX_TIMESTAMP.value,
        min_volume_ratio=_MIN_VOLUME_RATIO.value,
    )
  except (ValueError, TypeError) as error:
    print(f"build_examples: error: {error}", file=sys.stderr)
    return 1
  beam_args = ingestion.beam_args_with_defaults(argv[1:])
  logging.info("Beam args: %s", beam_args)
  try:
    summary = ingestion.run(
        config, _OUTPUT_DIR.value, beam_args, overwrite=_OVERWRITE.value,
        allow_empty_split=_ALLOW_EMPTY_SPLIT.value,
    )
  except ingestion.IngestionError as error:
    # A glob matching nothing, an occupied or unwritable output_dir, a
    # corrupt input file, no train/eval examples: one line, no traceback.
    print(f"build_examples: error: {error}", file=sys.stderr)
    return 1
  print(json.dumps(summary, indent=2, sort_keys=True))
  return 0


def _parse_known_flags(argv: list[str]) -> list[str]:
  """Parses this binary's flags; the rest (Beam's) stay in argv. --help
  exits 0 (absl's exits 1)."""
  try:
    return flags.FLAGS(argv, known_only=True)
  except SystemExit as done:
    if done.code == 1 and any(a in ("--help", "-h", "-?", "--helpfull", "--helpshort") for a in argv[1:]):
      sys.exit(0)
    raise


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=_parse_known_flags)
