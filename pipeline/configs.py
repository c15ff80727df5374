"""Typed settings of the TFX pipeline: one `PipelineConfig` flows from the
runner into `create_pipeline`.

`PipelineConfig.from_dict` rejects unknown keys, so a typo in a config file or
a runner is an error instead of a setting silently ignored. The model and
training settings are not repeated here: the config holds the trainer's own
typed configs (`model_config: trainer.config.ModelConfig`, `train_config:
TrainConfig`, nested as tf-models' experiment configs hold theirs; a nested
dict is checked by that config), so an unknown variant or an impossible model
setting is refused when the config is made, before any component runs. The
ingestion's and Transform's history length and the negative-sampling seed
are the model's (`max_seq_len`, `seed` read `model_config`). Nothing here
imports TFX or TensorFlow; the runners parse flags into this object cheaply.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
from typing import Any, Mapping, Optional

from pipeline import schema_builder
from preprocessing import features
from preprocessing import typed_config
from trainer import config as trainer_config

# Kubeflow (and Vertex) require this form for pipeline names.
PIPELINE_NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,127}")
INPUT_FORMATS = ("behavior", "impressions", "movielens")
DEFAULT_SCHEMA_PATH = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "schema", "schema.pbtxt"
)
DEFAULT_BEAM_ARGS: tuple[str, ...] = (
    "--direct_running_mode=multi_processing",
    "--direct_num_workers=2",
)
# Evaluation slices: history length in [edge_i, edge_{i+1}).
DEFAULT_HISTORY_LENGTH_EDGES: tuple[int, ...] = (0, 1, 10, 100, 1000)


# Trainer settings the runners set by their own flags (or, for seed, the
# pipeline's default); `trainer_settings` refuses them among the extra
# hyperparameters (--hparam).
_MANAGED_TRAINER_SETTINGS = frozenset(
    {"model", "max_seq_len", "batch_size", "seed", "train_steps", "eval_steps"}
)
# The pipeline's TrainConfig departs from TrainConfig's defaults here: the
# Trainer's EvalArgs need a number of steps (None would read all of eval).
_PIPELINE_TRAIN_DEFAULTS: Mapping[str, Any] = {"eval_steps": 100}


# A pipeline setting is missing, unknown or out of range.
ConfigError = typed_config.ConfigError


@dataclasses.dataclass(frozen=True)
class PipelineConfig(typed_config.TypedConfig):
  """Every setting of one pipeline run.

  Attributes:
    pipeline_root: where TFX writes artifacts (local path or gs://...).
    data_root: the raw logs (`behaviors/YYYYMMDD.csv`, `impressions/...`).
    serving_model_dir: the base directory TF Serving watches; the Pusher
      writes numbered versions under it.
    pipeline_name: matches [a-z0-9][a-z0-9-]{0,127} (Kubeflow's rule).
    metadata_path: SQLite ML Metadata file for local runs; empty means
      `<pipeline_root>/metadata.sqlite`.
    input_format: raw log format read by the ingestion ExampleGen.
    date: the newest day (span) to train on and evaluate on; None means the
      newest span found under data_root.
    rolling_window_days: days of impressions in one run (train + eval).
    eval_days: newest days of the window held out for evaluation.
    neg_per_pos: sampled negatives per positive (behavior format).
    min_history: examples with shorter histories are dropped by ingestion.
    model_config: the model the Trainer builds (variant, sizes,
      `max_seq_len`, `seed`); a dict is read by `ModelConfig.from_dict`.
      Its `max_seq_len` is also ingestion's and Transform's history length
      (it must equal the schema's sequence bound) and its `seed` ingestion's
      negative-sampling seed (the `max_seq_len` and `seed` properties).
    train_config: how the Trainer trains (`train_steps`, `eval_steps` for
      its TrainArgs/EvalArgs, `batch_size`, ...); a dict is read by
      `TrainConfig.from_dict` over the pipeline's default eval_steps 100.
    warm_start: initialise from the latest blessed (served) model.
    schema_path: the curated schema file imported by ImportSchemaGen.
    max_reject_fraction: the run stops when ingestion rejects more than this
      fraction of raw rows (rejected rows never reach ExampleValidator).
    min_volume_ratio: the run stops when an eval day's behaviours,
      impressions or examples fall below this fraction of the median of the
      window's earlier days (a lost half-day, a truncated file); 0 disables.
    auc_lower_bound: a model with a lower eval AUC is never blessed.
    auc_max_decrease: a model whose AUC is lower than the baseline's by more
      than this is not blessed.
    history_length_edges: evaluation slices by history length.
    infra_validation_examples: held-out examples sent to the candidate in the
      offline infra validation and kept as TF Serving warm-up requests.
    beam_pipeline_args: Beam options of every Beam-based component.
    enable_cache: reuse cached executions (makes reruns of a date cheap).
  """

  pipeline_root: str
  data_root: str
  serving_model_dir: str
  pipeline_name: str = "eta-ctr"
  metadata_path: str = ""
  input_format: str = "impressions"
  date: Optional[datetime.date] = None
  rolling_window_days: int = 7
  eval_days: int = 1
  neg_per_pos: int = 1
  min_history: int = 1
  model_config: trainer_config.ModelConfig = dataclasses.field(
      default_factory=trainer_config.ModelConfig
  )
  train_config: trainer_config.TrainConfig = dataclasses.field(
      default_factory=lambda: trainer_config.TrainConfig(**_PIPELINE_TRAIN_DEFAULTS)
  )
  warm_start: bool = True
  schema_path: str = DEFAULT_SCHEMA_PATH
  max_reject_fraction: float = 0.001
  min_volume_ratio: float = 0.7
  auc_lower_bound: float = 0.5
  auc_max_decrease: float = 0.002
  history_length_edges: tuple[int, ...] = DEFAULT_HISTORY_LENGTH_EDGES
  infra_validation_examples: int = 32
  beam_pipeline_args: tuple[str, ...] = DEFAULT_BEAM_ARGS
  enable_cache: bool = True

  settings_name = "pipeline setting(s)"

  def __post_init__(self) -> None:
    # Frozen: normalise sequences to tuples through object.__setattr__.
    object.__setattr__(self, "beam_pipeline_args", tuple(self.beam_pipeline_args))
    object.__setattr__(self, "history_length_edges", tuple(self.history_length_edges))
    object.__setattr__(self, "model_config", _nested(
        "model_config", trainer_config.ModelConfig, self.model_config, {}))
    object.__setattr__(self, "train_config", _nested(
        "train_config", trainer_config.TrainConfig, self.train_config,
        _PIPELINE_TRAIN_DEFAULTS))
    if isinstance(self.date, str):
      object.__setattr__(self, "date", parse_date(self.date))
    for name in ("pipeline_root", "data_root", "serving_model_dir"):
      typed_config.path_value(name, getattr(self, name))
    if not PIPELINE_NAME_PATTERN.fullmatch(self.pipeline_name):
      raise ConfigError(
          f"pipeline_name {self.pipeline_name!r} must match "
          f"{PIPELINE_NAME_PATTERN.pattern} (Kubeflow's rule)"
      )
    if self.input_format not in INPUT_FORMATS:
      raise ConfigError(
          f"input_format {self.input_format!r} is not one of {INPUT_FORMATS}"
      )
    if self.date is not None and not isinstance(self.date, datetime.date):
      raise ConfigError(f"date must be a datetime.date, got {self.date!r}")
    if self.date is not None and self.input_format == "movielens":
      raise ConfigError(
          "date must be None for movielens: its ratings.csv is one span, not "
          "daily files"
      )
    _check_int(self, "rolling_window_days", 2)
    _check_int(self, "eval_days", 1)
    if self.eval_days >= self.rolling_window_days:
      raise ConfigError(
          f"eval_days ({self.eval_days}) must be smaller than "
          f"rolling_window_days ({self.rolling_window_days}): some days must "
          "remain for training"
      )
    # The ingestion builds the Transform's short-sequence slice from it.
    if self.max_seq_len < features.SHORT_SEQ_LEN:
      raise ConfigError(
          f"max_seq_len ({self.max_seq_len}) must be at least the short "
          f"sequence length {features.SHORT_SEQ_LEN}"
      )
    if self.train_config.eval_steps is None:
      raise ConfigError(
          "train_config.eval_steps must be an int >= 1 (the Trainer's EvalArgs), got None"
      )
    _check_int(self, "neg_per_pos", 0)
    _check_int(self, "min_history", 0)
    _check_int(self, "infra_validation_examples", 1)
    typed_config.check_bool(self, "warm_start", "enable_cache")
    # Checked, not converted: the config fingerprint of a rerun reads them as given.
    for name in ("max_reject_fraction", "auc_lower_bound", "auc_max_decrease"):
      typed_config.fraction_value(name, getattr(self, name))
    typed_config.fraction_value("min_volume_ratio", self.min_volume_ratio, high_open=True)
    edges = self.history_length_edges
    if (
        not edges
        or edges[0] != 0
        or any(not isinstance(e, int) for e in edges)
        or any(b <= a for a, b in zip(edges, edges[1:]))
    ):
      raise ConfigError(
          f"history_length_edges {edges!r} must be strictly increasing ints "
          "starting at 0"
      )
    if not all(isinstance(a, str) for a in self.beam_pipeline_args):
      raise ConfigError("beam_pipeline_args must be strings")

  @property
  def max_seq_len(self) -> int:
    """History positions per example in ingestion, Transform and the model:
    the model's, the one source."""
    return self.model_config.max_seq_len

  @property
  def seed(self) -> int:
    """Ingestion's negative-sampling seed: the model's seed."""
    return self.model_config.seed

  def trainer_custom_config(self) -> dict[str, Any]:
    """The Trainer's custom_config for `trainer.tfx_trainer.run_fn`: the
    variant, max_seq_len, batch_size and seed, and every other setting of
    the two configs that differs from its default (the steps go in the
    Trainer's TrainArgs/EvalArgs)."""
    custom: dict[str, Any] = {}
    for held, default in (
        (self.model_config, trainer_config.ModelConfig()),
        (self.train_config, trainer_config.TrainConfig()),
    ):
      custom.update(
          (name, value) for name, value in held.to_dict().items()
          if value != getattr(default, name) and name not in ("train_steps", "eval_steps")
      )
    custom.update(
        model=self.model_config.model,
        max_seq_len=self.model_config.max_seq_len,
        batch_size=self.train_config.batch_size,
        seed=self.model_config.seed,
    )
    return custom

  def trainer_configs(
      self,
  ) -> tuple[trainer_config.ModelConfig, trainer_config.TrainConfig]:
    """The model and training configs the Trainer will build (its
    custom_config plus the TrainArgs/EvalArgs steps); ConfigError if it
    would refuse them."""
    return trainer_config.split_flat_config({
        **self.trainer_custom_config(),
        "train_steps": self.train_config.train_steps,
        "eval_steps": self.train_config.eval_steps,
    })

  @property
  def resolved_metadata_path(self) -> str:
    return self.metadata_path or os.path.join(self.pipeline_root, "metadata.sqlite")


_check_int = typed_config.check_int


def _nested(name: str, cls: type, value: Any, defaults: Mapping[str, Any]):
  """`value` as a `cls` (a trainer config): itself, or a dict read over
  `defaults` with unknown keys refused; its errors name the field."""
  if isinstance(value, cls):
    return value
  if not isinstance(value, Mapping):
    raise typed_config.ConfigTypeError(
        f"{name} must be a {cls.__name__} or a dict, got {value!r}"
    )
  try:
    return typed_config.from_dict(cls, {**defaults, **value}, "setting(s)")
  except typed_config.ConfigTypeError as error:
    raise typed_config.ConfigTypeError(f"{name}: {error}") from None
  except ConfigError as error:
    raise ConfigError(f"{name}: {error}") from None


def trainer_settings(
    settings: Mapping[str, Any], hyperparameters: Optional[Mapping[str, Any]] = None
) -> dict[str, dict[str, Any]]:
  """Flat trainer settings -> `{"model_config": ..., "train_config": ...}`
  for `PipelineConfig.from_dict`.

  Args:
    settings: the trainer settings a runner has flags for (model,
      max_seq_len, batch_size, train_steps, eval_steps).
    hyperparameters: any other field of ModelConfig or TrainConfig (the
      local runner's --hparam); a name that is a flag's setting, or that
      neither config has, is refused.
  """
  hyperparameters = dict(hyperparameters or {})
  managed = sorted(set(hyperparameters) & _MANAGED_TRAINER_SETTINGS)
  if managed:
    raise ConfigError(
        f"hyperparameters must not set {managed}: they are pipeline "
        "settings (the pipeline passes them to the Trainer)"
    )
  model_values, train_values = trainer_config.split_flat_settings(
      {**hyperparameters, **settings}
  )
  return {"model_config": model_values, "train_config": train_values}


def parse_date(text: str) -> datetime.date:
  """'2024-05-31' -> date(2024, 5, 31), with a clear error otherwise."""
  try:
    return datetime.date.fromisoformat(text)
  except ValueError:
    raise ConfigError(f"date {text!r} is not YYYY-MM-DD") from None


def span_of_date(day: datetime.date) -> int:
  """The TFX span number of a `{YYYY}{MM}{DD}` input: days since 1970-01-01."""
  return (day - datetime.date(1970, 1, 1)).days


def check_schema_bound(config: PipelineConfig,
                       schema_path: Optional[str] = None) -> None:
  """The schema's history bound must be the configured max_seq_len.

  Both runners call it before anything runs. `schema_path` is the file to
  read, by default `config.schema_path`.
  """
  schema_path = schema_path or config.schema_path
  bound = schema_builder.sequence_bound(schema_builder.load_schema(schema_path))
  if bound != config.max_seq_len:
    raise ConfigError(
        f"max_seq_len {config.max_seq_len} differs from the schema's history "
        f"bound {bound} ({schema_path}); generate a schema with "
        f"`python -m pipeline.schema_builder --max_seq_len={config.max_seq_len} "
        "--output=...` and pass --schema_path"
    )
