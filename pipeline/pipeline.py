"""`create_pipeline`: the TFX pipeline, a pure function of its config.

  ExampleGen (ingestion, one span per day, rolling window, train/eval by time)
    -> StatisticsGen -> ExampleValidator (against the curated ImportSchemaGen schema)
    -> DataGate (fails the run on anomalies or too many rejected rows)
    -> Transform (preprocessing.preprocessing_fn.preprocessing_fn)
    -> Trainer (trainer.tfx_trainer.run_fn; warm start from the latest blessed model)
    -> Evaluator (AUC, BinaryCrossEntropy, calibration, ExampleCount, GAUC,
                  slices; value and change thresholds vs the latest blessed model)
    -> OfflineInfraValidator (isolated load, warm-up requests)
    -> Pusher (numbered versions under serving_model_dir)

The same function feeds the local runner (LocalDagRunner) and the Kubeflow
runner (KubeflowV2DagRunner).

Reruns. TFX caching makes a rerun of a date reuse ExampleGen (same span and
input fingerprint: no duplicated span), StatisticsGen, ExampleValidator, the
gate and Transform. The Trainer alone cannot be reused by caching after a
run that pushed: its warm-start input (the latest blessed model) is now that
run's own model. Resolving "the latest model pushed for an earlier span"
would need another resolver strategy, and KubeflowV2DagRunner compiles only
LatestArtifactStrategy and LatestBlessedModelStrategy resolvers (its
step_builder), so the local runner makes reruns idempotent instead: before running,
it looks in ML Metadata for a run with the same settings and the same span
and input fingerprint whose Pusher completed, prints that run's outcome and
exits with its status (`--force_rerun` runs anyway); see
pipeline/rerun_guard.py. Module functions are named by dotted path, so
this module imports no trainer code (the config validates the model
settings with `trainer.config`, which imports no TensorFlow).
"""

from __future__ import annotations

from typing import Any, Optional

from pipeline import configs
from preprocessing import features

PREPROCESSING_FN = "preprocessing.preprocessing_fn.preprocessing_fn"
RUN_FN = "trainer.tfx_trainer.run_fn"
GAUC_MODULE = "pipeline.gauc_metric"

# Component ids (also MLMD node ids; the runners and tests look them up).
EXAMPLE_GEN = "ExampleGen"
STATISTICS_GEN = "StatisticsGen"
SCHEMA_GEN = "ImportSchemaGen"
EXAMPLE_VALIDATOR = "ExampleValidator"
DATA_GATE = "DataGate"
TRANSFORM = "Transform"
MODEL_RESOLVER = "latest_blessed_model_resolver"
TRAINER = "Trainer"
EVALUATOR = "Evaluator"
INFRA_VALIDATOR = "OfflineInfraValidator"
PUSHER = "Pusher"


def stats_options():
  """TFDV options sized for examples carrying 1k-10k-long int lists.

  * Small record batches: one example holds up to 4 x max_seq_len values, so
    the default batch (1000 examples) could hold 40M values at L = 10k.
  * More value-count histogram buckets, to see the list-length distribution
    the schema bounds (`value_count.max`).
  * No semantic-domain or natural-language inference over the long lists.
  """
  # TFDV, TFMA and TFX are imported in the functions that use them: see
  # example_gen_component.
  import tensorflow_data_validation as tfdv  # pylint: disable=g-import-not-at-top

  return tfdv.StatsOptions(
      desired_batch_size=128,
      num_values_histogram_buckets=20,
      num_histogram_buckets=20,
      num_quantiles_histogram_buckets=20,
      num_top_values=20,
      num_rank_histogram_buckets=20,
      enable_semantic_domain_stats=False,
  )


def eval_config(config: configs.PipelineConfig):
  """The TFMA EvalConfig: metrics, slices and the blessing thresholds."""
  # Lazy: see example_gen_component.
  import tensorflow_model_analysis as tfma  # pylint: disable=g-import-not-at-top

  auc_threshold = tfma.MetricThreshold(
      value_threshold=tfma.GenericValueThreshold(
          lower_bound={"value": config.auc_lower_bound}
      ),
      change_threshold=tfma.GenericChangeThreshold(
          direction=tfma.MetricDirection.HIGHER_IS_BETTER,
          absolute={"value": -config.auc_max_decrease},
      ),
  )
  return tfma.EvalConfig(
      model_specs=[
          tfma.ModelSpec(
              signature_name=features.SERVING_DEFAULT_SIGNATURE,
              label_key=features.LABEL_KEY,
              prediction_key=features.PROBABILITIES_KEY,
              # Gives TFMA the Transform outputs, which hold the slicing keys.
              preprocessing_function_names=[features.TRANSFORM_FEATURES_SIGNATURE],
          )
      ],
      slicing_specs=[
          tfma.SlicingSpec(),
          tfma.SlicingSpec(feature_keys=[features.SLICE_HIST_LENGTH_BUCKET]),
          tfma.SlicingSpec(feature_keys=[features.SLICE_CATEGORY_ID]),
      ],
      metrics_specs=[
          tfma.MetricsSpec(
              metrics=[
                  tfma.MetricConfig(class_name="ExampleCount"),
                  # Thresholds gate the overall slice only: small slices
                  # are too noisy to block a push.
                  tfma.MetricConfig(
                      class_name="AUC",
                      per_slice_thresholds=[
                          tfma.PerSliceMetricThreshold(
                              slicing_specs=[tfma.SlicingSpec()],
                              threshold=auc_threshold,
                          )
                      ],
                  ),
                  tfma.MetricConfig(class_name="BinaryCrossEntropy"),
                  tfma.MetricConfig(class_name="Calibration"),
                  tfma.MetricConfig(class_name="MeanLabel"),
                  tfma.MetricConfig(class_name="MeanPrediction"),
                  tfma.MetricConfig(class_name="CalibrationPlot"),
              ]
          ),
          tfma.MetricsSpec(
              metrics=[tfma.MetricConfig(class_name="GroupAUC", module=GAUC_MODULE)],
              query_key=features.USER_ID.name,
          ),
      ],
  )


# Raw log layout under data_root, per input format (daily files for spans).
DAILY_PATTERN = "{YYYY}{MM}{DD}.csv"
INPUT_PATTERNS: dict[str, dict[str, str]] = {
    "impressions": {
        "input_pattern": "impressions/" + DAILY_PATTERN,
        "behavior_pattern": "behaviors/" + DAILY_PATTERN,
    },
    "behavior": {"input_pattern": "behaviors/" + DAILY_PATTERN},
    # MovieLens has no daily files: one span holding every rating.
    "movielens": {"input_pattern": "ratings.csv", "movies_pattern": "movies.csv"},
}


def example_gen_component(config: configs.PipelineConfig):
  """The ingestion ExampleGen of `config` (the rerun guard reads its input
  settings to fingerprint a date's input before running)."""
  # TFX and its components load here, not at import (seconds): the runners
  # import this module, and their --help and config errors answer first.
  from tfx import v1 as tfx  # pylint: disable=g-import-not-at-top

  from preprocessing import example_gen  # pylint: disable=g-import-not-at-top
  from preprocessing import spans  # pylint: disable=g-import-not-at-top

  settings = spans.ExampleGenSettings(
      input_format=config.input_format,
      window_days=config.rolling_window_days,
      eval_days=config.eval_days,
      max_seq_len=config.max_seq_len,
      neg_per_pos=config.neg_per_pos,
      min_history=config.min_history,
      seed=config.seed,
      # Daily spans only: MovieLens is one span, with no earlier days to
      # compare the eval day with.
      min_volume_ratio=(
          config.min_volume_ratio if config.input_format != "movielens" else 0.0
      ),
      **INPUT_PATTERNS[config.input_format],
  )
  range_config = None
  if config.date is not None:
    span = configs.span_of_date(config.date)
    range_config = tfx.proto.RangeConfig(
        static_range=tfx.proto.StaticRange(
            start_span_number=span, end_span_number=span
        )
    )
  return example_gen.create_example_gen(
      input_base=config.data_root, settings=settings, range_config=range_config
  ).with_id(EXAMPLE_GEN)


def create_pipeline(
    config: configs.PipelineConfig,
    metadata_connection_config: Optional[Any] = None,
):
  """Builds the pipeline from `config` alone (no file or environment reads).

  Args:
    config: every path and setting.
    metadata_connection_config: ML Metadata connection (SQLite for local
      runs); None for orchestrators that bring their own (Kubeflow).

  Returns:
    a `tfx.dsl.Pipeline`.
  """
  # Lazy: see example_gen_component.
  from tfx import v1 as tfx  # pylint: disable=g-import-not-at-top

  from pipeline import components  # pylint: disable=g-import-not-at-top

  example_gen = example_gen_component(config)
  statistics_gen = tfx.components.StatisticsGen(
      examples=example_gen.outputs["examples"], stats_options=stats_options()
  ).with_id(STATISTICS_GEN)
  schema_gen = tfx.components.ImportSchemaGen(
      schema_file=config.schema_path
  ).with_id(SCHEMA_GEN)
  example_validator = tfx.components.ExampleValidator(
      statistics=statistics_gen.outputs["statistics"],
      schema=schema_gen.outputs["schema"],
  ).with_id(EXAMPLE_VALIDATOR)
  data_gate = components.DataGate(
      anomalies=example_validator.outputs["anomalies"],
      examples=example_gen.outputs["examples"],
      schema=schema_gen.outputs["schema"],
      max_reject_fraction=config.max_reject_fraction,
  ).with_id(DATA_GATE)
  transform = tfx.components.Transform(
      examples=example_gen.outputs["examples"],
      schema=data_gate.outputs["validated_schema"],
      preprocessing_fn=PREPROCESSING_FN,
      custom_config={
          "max_seq_len": config.max_seq_len,
          "history_length_edges": list(config.history_length_edges),
      },
  ).with_id(TRANSFORM)
  model_resolver = tfx.dsl.Resolver(
      strategy_class=tfx.dsl.experimental.LatestBlessedModelStrategy,
      model=tfx.dsl.Channel(type=tfx.types.standard_artifacts.Model),
      model_blessing=tfx.dsl.Channel(type=tfx.types.standard_artifacts.ModelBlessing),
  ).with_id(MODEL_RESOLVER)
  trainer = tfx.components.Trainer(
      run_fn=RUN_FN,
      examples=transform.outputs["transformed_examples"],
      transform_graph=transform.outputs["transform_graph"],
      schema=transform.outputs["post_transform_schema"],
      base_model=model_resolver.outputs["model"] if config.warm_start else None,
      train_args=tfx.proto.TrainArgs(num_steps=config.train_config.train_steps),
      eval_args=tfx.proto.EvalArgs(num_steps=config.train_config.eval_steps),
      custom_config=config.trainer_custom_config(),
  ).with_id(TRAINER)
  evaluator = tfx.components.Evaluator(
      examples=example_gen.outputs["examples"],
      model=trainer.outputs["model"],
      baseline_model=model_resolver.outputs["model"],
      eval_config=eval_config(config),
  ).with_id(EVALUATOR)
  infra_validator = components.OfflineInfraValidator(
      model=trainer.outputs["model"],
      examples=example_gen.outputs["examples"],
      num_examples=config.infra_validation_examples,
  ).with_id(INFRA_VALIDATOR)
  # No `model` input: the Pusher pushes the infra-validated copy, which
  # carries the TF Serving warm-up requests.
  pusher = tfx.components.Pusher(
      model_blessing=evaluator.outputs["blessing"],
      infra_blessing=infra_validator.outputs["blessing"],
      push_destination=tfx.proto.PushDestination(
          filesystem=tfx.proto.PushDestination.Filesystem(
              base_directory=config.serving_model_dir
          )
      ),
  ).with_id(PUSHER)

  return tfx.dsl.Pipeline(
      pipeline_name=config.pipeline_name,
      pipeline_root=config.pipeline_root,
      components=[
          example_gen,
          statistics_gen,
          schema_gen,
          example_validator,
          data_gate,
          transform,
          model_resolver,
          trainer,
          evaluator,
          infra_validator,
          pusher,
      ],
      enable_cache=config.enable_cache,
      metadata_connection_config=metadata_connection_config,
      beam_pipeline_args=list(config.beam_pipeline_args),
  )
