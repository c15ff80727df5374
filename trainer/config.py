"""Typed settings of the model family and of training.

One `ModelConfig` picks the variant and its sizes; one `TrainConfig` holds the
optimisation settings. Both reject unknown keys (`from_dict`) and check their
values in `__post_init__`, so a typo or an impossible combination (top_k above
max_seq_len, an unknown variant) is an error before any TensorFlow runs.
Nothing here imports TensorFlow.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

from preprocessing import features
from preprocessing import typed_config


@dataclasses.dataclass(frozen=True)
class VariantSpec:
  """One model variant.

  Attributes:
    branch: class name of its long-sequence branch in `trainer.branches`;
      None for a model with no long branch (din).
    uses_top_k: the branch keeps top_k behaviours (top_k <= max_seq_len).
    description: what the long branch does.
  """

  branch: Optional[str]
  uses_top_k: bool
  description: str


# The model family: the one place a variant name is defined.
VARIANT_REGISTRY: dict[str, VariantSpec] = {
    "eta": VariantSpec(
        "EtaBranch", True,
        "SimHash signatures, Hamming top-k, multi-head target attention over the k",
    ),
    "exact_topk": VariantSpec(
        "ExactTopKBranch", True,
        "top-k by the exact dot product of retrieval embeddings, then the same attention",
    ),
    "sim_hard": VariantSpec(
        "SimHardBranch", True,
        "the k most recent behaviours of the candidate's category, then the same attention",
    ),
    "full_attention": VariantSpec(
        "FullAttentionBranch", False, "multi-head target attention over all L",
    ),
    "sdim": VariantSpec(
        "SdimBranch", False, "SDIM hash-bucket aggregation of all L",
    ),
    "avgpool": VariantSpec("AvgPoolBranch", False, "masked mean of all L behaviours"),
    "sam": VariantSpec(
        "SamBranch", False,
        "SAM: T passes of point-wise dual-query attention over all L with a GRU memory",
    ),
    "din": VariantSpec(None, False, "none: the short DIN branch only (baseline)"),
}
VARIANTS: tuple[str, ...] = tuple(VARIANT_REGISTRY)
# Variants whose long branch keeps k behaviours.
TOP_K_VARIANTS: tuple[str, ...] = tuple(
    name for name, spec in VARIANT_REGISTRY.items() if spec.uses_top_k
)
# What SimHash (eta) and the exact dot product (exact_topk) compare.
RETRIEVAL_EMBEDDINGS: tuple[str, ...] = ("item", "item_category")
ETA_NUM_BITS: tuple[int, ...] = (16, 32, 48, 64, 128)
# SAM's second query: the updated memory (paper) or the candidate (released code).
SAM_MODES: tuple[str, ...] = ("iter", "stk")
# Variants with a retrieval or scorer step that can read separate attention
# embeddings (`decoupled_attention`).
ATTENTION_EMBEDDING_VARIANTS: tuple[str, ...] = ("eta", "exact_topk", "sam")


# A model or training setting is unknown, missing or out of range.
ConfigError = typed_config.ConfigError
_check_int = typed_config.check_int
_check_float = typed_config.check_float
_check_units = typed_config.check_units


@dataclasses.dataclass(frozen=True)
class ModelConfig(typed_config.TypedConfig):
  """What model to build.

  Attributes:
    model: the variant, one of VARIANTS.
    max_seq_len: static history length L (the transformed features' length).
    short_seq_len: the short-term branch reads the last short_seq_len positions.
    embedding_dim: d of the shared item and category embeddings. Small by
      default: on the synthetic data d = 32 / 16 / 8 gave eval AUC 0.805 /
      0.812 / 0.816 (bench/results/train.md): wider rows memorise.
    side_embedding_dim: dimension of the time-gap and behaviour-type
      embeddings appended to each behaviour's key.
    top_k: behaviours retrieved by eta, exact_topk and sim_hard (<= max_seq_len).
    num_bits: SimHash signature bits for eta.
    prefer_recent: eta's retrieval breaks equal-distance ties towards the
      more recent behaviour (False: the older one).
    num_heads / head_dim: multi-head target attention of the long branch.
    din_hidden_units: DIN activation unit of the short branch.
    mlp_units: hidden layers of the final MLP.
    linear_shortcut: add a linear function of the head's input to the
      logit (wide & deep): counts such as the history statistics reach the
      logit directly instead of only through the MLP.
    dropout: dropout rate in the MLP and the attention.
    embedding_init_stddev: stddev of the N(0, s) initial embeddings. Small:
      the history statistics state exact matches, so the embeddings need not
      start far apart, and large random rows are what the network memorises
      first (eta on the synthetic data, 3 seeds: 0.8172 at 0.05 against
      0.8144 at 1.0; 0.01 gave 0.8166 on seed 0 with a worse log loss).
    embedding_l2: weight of the L2 penalty on the item and category rows a
      batch uses (each distinct row once per batch, DIN-style): the penalty
      is the MEAN squared entry of those rows (about stddev**2 for N(0, s)
      rows), so the weight reads on the scale of the log loss; 0 disables.
    use_item_ids: embed item ids (query, keys, retrieval). False (the
      default) keeps the category and side features only: nothing to
      memorise per item, while the history statistics still count exact item
      matches (synthetic: 0.792 with item ids, 0.808 without, at d = 32).
    retrieval_embedding: what eta's SimHash and exact_topk's dot product
      compare: "item" (the item embedding; eta exports a signature table
      keyed by item slot) or "item_category" ([item, category] embeddings,
      the category alone without item ids; hashed per request at serving).
    long_statistics: append the target-aware history statistics
      (trainer/layers/history_statistics.py) to every long branch; din,
      the short-history baseline, never gets them.
    statistics_bins: with long_statistics, each statistic also enters the
      head as its position in this many quantile bins, the boundaries set
      from training examples before training
      (trainer/layers/piecewise_linear.py); 0: the raw statistics only.
    sdim_num_bits / sdim_tau: SDIM hashing (m bits in groups of tau).
    seed: seed of the SimHash projections and of weight initialisation.
    jit_compile: run retrieval and attention under XLA when training
      (exported serving functions never use XLA: TF Serving disables it).
    sam_num_passes: SAM's memory passes T (released configs: 2 and 3).
    sam_scorer_units: hidden width of SAM's per-pass scorer MLP (paper: 8).
    sam_projection_units: width of SAM's per-pass projection of its weight
      vector (paper: 16).
    sam_mode: "iter" (the updated memory is the second query, the paper) or
      "stk" (the candidate stays the second query, the released code).
    decoupled_attention: separate attention embeddings (DARE, arXiv
      2410.02604) for what decides WHICH behaviours matter (eta's SimHash,
      exact_topk's dot product, sam's scorer), while the representation
      embeddings feed attention values and the head; only for
      ATTENTION_EMBEDDING_VARIANTS. sam's scorer trains its attention
      tables; eta's and exact_topk's retrieval has no gradient (sign, top-k),
      so theirs keep their initial N(0, s) rows (an exact id still matches
      itself; neighbours are random).
    attention_embedding_dim: width of the attention item and category
      tables when decoupled_attention is set.
  """

  model: str = "eta"
  max_seq_len: int = features.DEFAULT_MAX_SEQ_LEN
  short_seq_len: int = features.SHORT_SEQ_LEN
  embedding_dim: int = 8
  side_embedding_dim: int = 8
  top_k: int = 64
  num_bits: int = 64
  prefer_recent: bool = False
  num_heads: int = 2
  head_dim: int = 32
  din_hidden_units: tuple[int, ...] = (64, 32)
  mlp_units: tuple[int, ...] = (128, 64)
  linear_shortcut: bool = False
  dropout: float = 0.0
  embedding_init_stddev: float = 0.05
  embedding_l2: float = 0.0
  use_item_ids: bool = False
  retrieval_embedding: str = "item_category"
  long_statistics: bool = True
  statistics_bins: int = 0
  sdim_num_bits: int = 48
  sdim_tau: int = 3
  seed: int = 0
  jit_compile: bool = True
  sam_num_passes: int = 2
  sam_scorer_units: int = 8
  sam_projection_units: int = 16
  sam_mode: str = "iter"
  decoupled_attention: bool = False
  attention_embedding_dim: int = 8

  def __post_init__(self) -> None:
    if self.model not in VARIANTS:
      raise ConfigError(f"unknown model variant {self.model!r}; known: {VARIANTS}")
    typed_config.check_max_seq_len(self)
    _check_int(self, "short_seq_len", 1)
    if self.short_seq_len > self.max_seq_len:
      raise ConfigError(
          f"short_seq_len ({self.short_seq_len}) must be <= max_seq_len "
          f"({self.max_seq_len})"
      )
    _check_int(self, "embedding_dim", 1)
    _check_int(self, "side_embedding_dim", 1)
    _check_int(self, "top_k", 1)
    if self.model in TOP_K_VARIANTS and self.top_k > self.max_seq_len:
      raise ConfigError(
          f"top_k ({self.top_k}) must be <= max_seq_len ({self.max_seq_len}) "
          f"for {self.model}"
      )
    if self.num_bits not in ETA_NUM_BITS:
      raise ConfigError(f"num_bits must be one of {ETA_NUM_BITS}, got {self.num_bits!r}")
    _check_int(self, "num_heads", 1)
    _check_int(self, "head_dim", 1)
    _check_units(self, "din_hidden_units", allow_empty=False)
    _check_units(self, "mlp_units", allow_empty=True)
    _check_float(self, "dropout", 0.0, 1.0, high_open=True)
    _check_float(self, "embedding_init_stddev", 0.0, 1e3)
    if self.embedding_init_stddev == 0.0:
      raise ConfigError("embedding_init_stddev must be > 0")
    _check_float(self, "embedding_l2", 0.0, 1e3)
    typed_config.check_bool(
        self, "use_item_ids", "long_statistics", "linear_shortcut", "prefer_recent"
    )
    if self.retrieval_embedding not in RETRIEVAL_EMBEDDINGS:
      raise ConfigError(
          f"retrieval_embedding must be one of {RETRIEVAL_EMBEDDINGS}, got "
          f"{self.retrieval_embedding!r}"
      )
    if not self.use_item_ids and self.retrieval_embedding == "item":
      raise ConfigError(
          "use_item_ids=False needs retrieval_embedding='item_category' "
          "(there is no item embedding to retrieve with)"
      )
    _check_int(self, "statistics_bins", 0, 64)
    _check_int(self, "sdim_tau", 1)
    if self.sdim_num_bits not in ETA_NUM_BITS:
      raise ConfigError(
          f"sdim_num_bits must be one of {ETA_NUM_BITS}, got {self.sdim_num_bits!r}"
      )
    if self.sdim_num_bits % self.sdim_tau:
      raise ConfigError(
          f"sdim_num_bits ({self.sdim_num_bits}) must be a multiple of "
          f"sdim_tau ({self.sdim_tau})"
      )
    _check_int(self, "seed", 0, 2**31 - 1)
    typed_config.check_bool(self, "jit_compile")
    _check_int(self, "sam_num_passes", 1, 16)
    _check_int(self, "sam_scorer_units", 1)
    _check_int(self, "sam_projection_units", 1)
    if self.sam_mode not in SAM_MODES:
      raise ConfigError(f"sam_mode must be one of {SAM_MODES}, got {self.sam_mode!r}")
    typed_config.check_bool(self, "decoupled_attention")
    _check_int(self, "attention_embedding_dim", 1)
    if self.decoupled_attention and self.model not in ATTENTION_EMBEDDING_VARIANTS:
      raise ConfigError(
          f"decoupled_attention needs one of {ATTENTION_EMBEDDING_VARIANTS} (nothing "
          f"in {self.model} would read the attention embeddings)"
      )


# Early-stopping metric -> True when higher is better.
EARLY_STOPPING_METRICS: dict[str, bool] = {"logloss": False, "auc": True}


@dataclasses.dataclass(frozen=True)
class TrainConfig(typed_config.TypedConfig):
  """How to train.

  Attributes:
    batch_size: examples per step (global, across replicas).
    train_steps: optimizer steps.
    eval_steps: eval batches; None reads the whole eval set once.
    learning_rate: Adam's learning rate.
    shuffle_buffer: examples in the training shuffle buffer (the files are
      also read in shuffled order).
    steps_per_epoch: Keras epoch length: progress lines, TensorBoard points,
      BackupAndRestore checkpoints and early-stopping checks happen at epoch
      ends.
    validation_days: early stopping's validation set is the last
      validation_days UTC days of the TRAINING examples (by `timestamp`),
      held out of training; never the eval split. 0 disables early stopping
      (then train_steps are all run).
    early_stopping_patience: stop after this many epochs without a better
      validation metric; the best epoch's weights are kept. train_steps is
      then the upper bound.
    early_stopping_metric: "logloss" (lower is better; the default: a proper
      score that also sees the overconfidence of memorised ids, and defined on
      a one-class day) or "auc" (higher is better).
    refit: after early stopping, train a fresh model on EVERY training day
      (the validation days included: the most recent data, which CTR models
      need most) for the best epoch's steps scaled by the example count;
      that model is exported. Model selection still read only the
      validation days; the eval split is never read before the end.
    ema_momentum: above 0, Adam keeps a moving average of the weights
      (Polyak averaging; momentum min(ema_momentum, (1 + t) / (10 + t)) at
      step t, from the initial weights) and the model's weights are set to
      that average at every epoch end, so early stopping evaluates, keeps
      and exports averaged weights, which are less noisy than the last
      step's; 0 trains plain Adam. 0.99 by default: on the synthetic data
      (eta, 3 seeds, 4,000 users) AUC 0.8205 against 0.8199, log loss 0.4144
      against 0.4153; on MovieLens 0.634 against 0.624 (bench/results/train.md).
  """

  batch_size: int = 256
  train_steps: int = 1000
  eval_steps: Optional[int] = None
  learning_rate: float = 1e-3
  shuffle_buffer: int = 10_000
  steps_per_epoch: int = 100
  validation_days: int = 1
  early_stopping_patience: int = 2
  early_stopping_metric: str = "logloss"
  refit: bool = False
  ema_momentum: float = 0.99

  def __post_init__(self) -> None:
    _check_int(self, "batch_size", 1)
    _check_int(self, "train_steps", 1)
    if self.eval_steps is not None:
      _check_int(self, "eval_steps", 1)
    _check_float(self, "learning_rate", 0.0, 10.0)
    if self.learning_rate == 0.0:
      raise ConfigError("learning_rate must be > 0")
    _check_int(self, "shuffle_buffer", 1)
    _check_int(self, "steps_per_epoch", 1)
    _check_int(self, "validation_days", 0, 366)
    _check_int(self, "early_stopping_patience", 1)
    typed_config.check_bool(self, "refit")
    _check_float(self, "ema_momentum", 0.0, 0.9999)
    if self.refit and self.validation_days == 0:
      raise ConfigError("refit needs early stopping (validation_days >= 1)")
    if self.early_stopping_metric not in EARLY_STOPPING_METRICS:
      raise ConfigError(
          f"early_stopping_metric must be one of {sorted(EARLY_STOPPING_METRICS)}, "
          f"got {self.early_stopping_metric!r}"
      )


def split_flat_settings(
    values: Optional[Mapping[str, Any]],
) -> tuple[dict[str, Any], dict[str, Any]]:
  """One flat dict -> (ModelConfig fields, TrainConfig fields), unbuilt.

  Each key goes to the config that has a field of that name; a key neither
  has is refused, so no setting is silently ignored.
  """
  values = dict(values or {})
  model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
  train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
  unknown = sorted(set(values) - model_fields - train_fields)
  if unknown:
    raise ConfigError(
        f"unknown setting(s) {unknown}; known: {sorted(model_fields | train_fields)}"
    )
  model_values = {k: v for k, v in values.items() if k in model_fields}
  train_values = {k: v for k, v in values.items() if k in train_fields}
  return model_values, train_values


def split_flat_config(
    values: Optional[Mapping[str, Any]],
) -> tuple[ModelConfig, TrainConfig]:
  """One flat dict (e.g. TFX `custom_config`) -> (ModelConfig, TrainConfig),
  refusing a key neither config has (`split_flat_settings`)."""
  model_values, train_values = split_flat_settings(values)
  return ModelConfig.from_dict(model_values), TrainConfig.from_dict(train_values)
