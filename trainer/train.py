r"""Standalone trainer: ingestion TFRecords in, metrics.json and a SavedModel out.

  python -m trainer.train --train_files='DIR/train/*.tfrecord.gz' \
      --eval_files='DIR/eval/*.tfrecord.gz' --model=eta --max_seq_len=1024 \
      --train_steps=1000 --batch_size=256 --output_dir=OUT \
      [--hparams='{"num_heads": 4, "top_k": 32}'] [--overwrite]

Applies the same `transform_features` as the TFX pipeline. Writes
OUT/metrics.json (auc, gauc, logloss, mean_prediction, mean_label,
calibration, examples_per_sec_train, examples_per_sec_eval, the steps run,
the validation split and early stopping's best epoch, the configs) and
OUT/saved_model (`serving_default`: serialized raw tf.Example ->
probabilities). Progress is logged at each epoch end (--steps_per_epoch).

Early stopping (on unless --hparams sets validation_days 0): the last
validation_days UTC days of the TRAINING files validate at each epoch end;
training stops after early_stopping_patience epochs without a better
early_stopping_metric and keeps the best epoch; --train_steps is the upper
bound. The eval files are read only after training.

A killed run resumes from OUT/backup when rerun with the same settings and
training files; another run into the same OUT is refused (--overwrite
deletes the old run's state and outputs and starts afresh). Mistakes
(globs matching nothing, empty inputs, too few days, another run's OUT) end
with a one-line `error:` and exit code 2.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging

from preprocessing import environment
from preprocessing import features
from preprocessing import flag_parsing
from trainer import config as config_lib

FLAGS = flags.FLAGS

def _define_flags() -> None:
  # Defined only when run as a program, so that other modules (tests,
  # other entry points) can import this one: absl flags are global.
  flags.DEFINE_list("train_files", None, "Glob(s) of training TFRecords.")
  flags.DEFINE_list("eval_files", None, "Glob(s) of eval TFRecords.")
  flags.DEFINE_string("output_dir", None, "Where metrics.json and saved_model go.")
  flags.DEFINE_string("model", "eta", "Model variant (trainer.config.VARIANTS).")
  flags.DEFINE_integer(
      "max_seq_len", features.DEFAULT_MAX_SEQ_LEN, "History length L of the model."
  )
  flags.DEFINE_integer(
      "train_steps", 1000, "Optimizer steps (the upper bound with early stopping)."
  )
  flags.DEFINE_integer("batch_size", 256, "Training batch size.")
  flags.DEFINE_integer("eval_batch_size", 1024, "Eval batch size.")
  flags.DEFINE_integer("eval_steps", None, "Eval batches (default: all).")
  flags.DEFINE_float("learning_rate", 1e-3, "Adam learning rate.")
  flags.DEFINE_integer(
      "steps_per_epoch", 100, "Steps between progress lines."
  )
  flags.DEFINE_integer("seed", 0, "Seed of weights, hashing and shuffling.")
  flags.DEFINE_string(
      "hparams", "{}",
      "JSON object of further ModelConfig/TrainConfig fields (unknown keys are "
      "refused), e.g. '{\"top_k\": 32, \"jit_compile\": false}'.",
  )
  flags.DEFINE_bool(
      "overwrite", False,
      "If --output_dir holds another run (other settings or training files), "
      "delete its backup and outputs and start afresh instead of refusing.",
  )


def settings_from_flags() -> dict[str, Any]:
  """The flat settings dict the flags describe (hparams override flags)."""
  settings = {
      "model": FLAGS.model,
      "max_seq_len": FLAGS.max_seq_len,
      "seed": FLAGS.seed,
      "train_steps": FLAGS.train_steps,
      "batch_size": FLAGS.batch_size,
      "eval_steps": FLAGS.eval_steps,
      "learning_rate": FLAGS.learning_rate,
      "steps_per_epoch": FLAGS.steps_per_epoch,
  }
  try:
    extra = json.loads(FLAGS.hparams)
  except json.JSONDecodeError as error:
    raise app.UsageError(f"--hparams is not JSON: {error}") from None
  if not isinstance(extra, dict):
    raise app.UsageError("--hparams must be a JSON object")
  settings.update(extra)
  return settings


def main(argv: Sequence[str]) -> None:
  flag_parsing.refuse_arguments(argv)
  environment.check_environment()
  # TensorFlow and the model load here, not at import: --help and a flag
  # mistake answer without waiting seconds for them.
  from trainer import standalone  # pylint: disable=g-import-not-at-top
  from trainer import training  # pylint: disable=g-import-not-at-top

  for name in ("train_files", "eval_files", "output_dir"):
    if not getattr(FLAGS, name):
      raise app.UsageError(f"--{name} is required")
  try:
    model_config, train_config = config_lib.split_flat_config(settings_from_flags())
  except config_lib.ConfigError as error:
    raise app.UsageError(str(error)) from None
  try:
    result = standalone.train_and_evaluate(
        train_files=FLAGS.train_files,
        eval_files=FLAGS.eval_files,
        output_dir=FLAGS.output_dir,
        model_config=model_config,
        train_config=train_config,
        eval_batch_size=FLAGS.eval_batch_size,
        overwrite=FLAGS.overwrite,
    )
  except training.TrainingError as error:
    # A mistake the user can fix: one line, no traceback.
    print(f"error: {error}", file=sys.stderr)
    sys.exit(2)
  logging.info(
      "%s: auc %.4f gauc %.4f logloss %.4f calibration %.3f, %.0f train examples/s",
      model_config.model, result["auc"], result["gauc"], result["logloss"],
      result["calibration"], result["examples_per_sec_train"],
  )


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=flag_parsing.parse_flags)
