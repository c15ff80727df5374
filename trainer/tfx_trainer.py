"""The TFX Trainer's work behind `trainer.model.run_fn`.

Reads Transform's output through `fn_args.data_accessor`, trains under the
strategy the environment calls for (one device; MirroredStrategy on GPUs;
MultiWorkerMirroredStrategy from TF_CONFIG), logs to TensorBoard under
`fn_args.model_run_dir`, keeps BackupAndRestore checkpoints there so a killed
worker resumes where the last epoch ended, warm-starts from
`fn_args.base_model` (the last blessed model) when given, and exports the
SavedModel with `serving_default` (serialized raw tf.Example ->
probabilities, Transform layer inside) and `transform_features` (for TFMA).

`fn_args.custom_config` is a flat dict of ModelConfig/TrainConfig fields
(unknown keys refused); train and eval steps come from TrainArgs/EvalArgs.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Mapping, Optional

import tensorflow as tf
from absl import logging

from trainer import config as config_lib
from trainer import export
from trainer import input as input_lib
from trainer import model as model_lib
from trainer import training

BACKUP_SUBDIR = "backup"


def trainer_configs(
    custom_config: Optional[Mapping[str, Any]], train_steps: int, eval_steps: Optional[int]
) -> tuple[config_lib.ModelConfig, config_lib.TrainConfig]:
  """fn_args.custom_config + TrainArgs/EvalArgs steps -> typed configs.

  An eval_steps of 0 or None means the whole eval split.
  """
  settings = dict(custom_config or {})
  for key in ("train_steps", "eval_steps"):
    if key in settings:
      raise config_lib.ConfigError(
          f"custom_config must not set {key!r}: the Trainer's TrainArgs/EvalArgs do"
      )
  settings["train_steps"] = int(train_steps)
  settings["eval_steps"] = int(eval_steps) if eval_steps else None
  return config_lib.split_flat_config(settings)


def check_transformed_schema(feature_spec: dict[str, Any], max_seq_len: int) -> None:
  """The Transform output must hold the model's inputs at the model's length."""
  problems = []
  for name, spec in model_lib.model_input_specs(max_seq_len).items():
    found = feature_spec.get(name)
    want = spec.shape.as_list()[1:]
    if found is None:
      problems.append(f"{name} missing")
    elif not isinstance(found, tf.io.FixedLenFeature) or list(found.shape) != want:
      problems.append(f"{name} is {found}, the model needs FixedLenFeature {want}")
  if problems:
    raise config_lib.ConfigError(
        "the Transform output does not fit the model (max_seq_len "
        f"{max_seq_len}): " + "; ".join(problems)
    )


def run(fn_args: Any) -> None:
  """Trains and exports (see the module docstring)."""
  import tensorflow_transform as tft  # pylint: disable=g-import-not-at-top

  model_config, train_config = trainer_configs(
      fn_args.custom_config, fn_args.train_steps, fn_args.eval_steps
  )
  logging.info("run_fn: %s, %s", model_config, train_config)
  tf_transform_output = tft.TFTransformOutput(fn_args.transform_output)
  check_transformed_schema(
      tf_transform_output.transformed_feature_spec(), model_config.max_seq_len
  )
  strategy = training.choose_strategy()
  train_dataset = input_lib.make_transformed_dataset(
      fn_args.train_files, fn_args.data_accessor, tf_transform_output,
      train_config.batch_size, training=True, seed=model_config.seed,
  )
  eval_dataset = input_lib.make_transformed_dataset(
      fn_args.eval_files, fn_args.data_accessor, tf_transform_output,
      train_config.batch_size, training=False,
  )
  with strategy.scope():
    model = model_lib.build_model(model_config)
    training.compile_model(model, train_config)
  if fn_args.base_model:
    training.warm_start(model, fn_args.base_model)
  callbacks = [
      tf.keras.callbacks.TensorBoard(log_dir=fn_args.model_run_dir, update_freq="epoch"),
      # Restores the newest epoch-end state (weights, optimizer, epoch) when
      # a restarted worker finds one; it overrides the warm start, as it should.
      tf.keras.callbacks.BackupAndRestore(
          backup_dir=os.path.join(fn_args.model_run_dir, BACKUP_SUBDIR)
      ),
  ]
  training.fit(model, train_dataset, train_config, callbacks)
  evaluation = model.evaluate(
      eval_dataset, steps=train_config.eval_steps, return_dict=True, verbose=0
  )
  logging.info("run_fn eval (Keras): %s", evaluation)

  chief = training.is_chief(strategy)
  # Every worker saves (saving may run collectives); only the chief's copy stays.
  export_dir = fn_args.serving_model_dir if chief else tempfile.mkdtemp()
  export.export_with_transform(model, export_dir, tf_transform_output)
  if not chief:
    tf.io.gfile.rmtree(export_dir)
