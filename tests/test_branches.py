"""Branch layers: registry, config round-trips, bad arguments, the two paths.

The two paths' values are checked against each other for every variant in
test_serving_signatures (rank vs the batch path, also after export) and
eta with k = L against full attention in test_model.
"""

import numpy as np
import pytest
import tensorflow as tf

from preprocessing import features
from preprocessing import transforms
from trainer import branches
from trainer import config
from trainer.layers import history_statistics

from tests import model_helpers

L = 24


SIZES = dict(max_seq_len=L, short_seq_len=6, top_k=5, embedding_dim=4,
             side_embedding_dim=2, num_heads=2, head_dim=3, jit_compile=False)


def small_config(variant, **overrides):
  return model_helpers.small_config(SIZES, variant, **overrides)


def toy_history(rows, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(0, L + 1, rows)
  mask = np.arange(L)[None] >= L - lengths[:, None]
  history = {
      features.HIST_ITEM_IDS.name: rng.integers(1, 50, (rows, L)),
      features.HIST_CATEGORY_IDS.name: rng.integers(1, 6, (rows, L)),
      transforms.HIST_TIME_GAP_BUCKETS: rng.integers(1, features.TIME_GAP_BUCKETS, (rows, L)),
      features.HIST_BEHAVIOR_TYPES.name: rng.integers(1, 5, (rows, L)),
  }
  history = {k: tf.constant(np.where(mask, v, 0), tf.int64) for k, v in history.items()}
  return history, tf.constant(mask)


def test_every_registered_variant_but_din_has_a_branch_class():
  for name, spec in config.VARIANT_REGISTRY.items():
    if name == "din":
      assert spec.branch is None
      continue
    assert issubclass(getattr(branches, spec.branch), branches.LongBranch)
  assert set(config.TOP_K_VARIANTS) == {"eta", "exact_topk", "sim_hard"}


@pytest.mark.parametrize("variant", [v for v in config.VARIANTS if v != "din"])
def test_config_round_trip_and_output_width(variant):
  model_config = small_config(variant)
  embeddings = branches.FeatureEmbeddings(embedding_dim=4, side_embedding_dim=2,
                                          use_item_ids=False,
                                          retrieval_embedding="item_category")
  branch = branches.build_branch(model_config, embeddings)
  history, mask = toy_history(7)
  item = tf.constant(np.arange(1, 8), tf.int64)
  category = tf.constant(np.arange(7) % 5 + 1, tf.int64)
  candidates = {features.ITEM_ID.name: item, features.CATEGORY_ID.name: category,
                branches.QUERY: embeddings.query(item, category)}
  output = branch(candidates, history, mask)
  assert output.shape[0] == 7 and np.isfinite(output.numpy()).all()
  rebuilt = type(branch).from_config(branch.get_config())
  assert rebuilt.get_config() == branch.get_config()
  assert isinstance(rebuilt.embeddings, branches.FeatureEmbeddings)
  assert rebuilt.embeddings.get_config() == embeddings.get_config()


@pytest.mark.parametrize("kwargs, message", [
    ({"embedding_dim": 0}, "embedding_dim must be >= 1"),
    ({"init_stddev": 0.0}, "init_stddev must be > 0"),
    ({"retrieval_embedding": "query"}, "retrieval_embedding must be one of"),
    ({"use_item_ids": False, "retrieval_embedding": "item"}, "needs retrieval_embedding"),
])
def test_feature_embeddings_refuse_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    branches.FeatureEmbeddings(**kwargs)


@pytest.mark.parametrize("cls, kwargs, message", [
    (branches.EtaBranch, {"top_k": 0}, "top_k must be >= 1"),
    (branches.SimHardBranch, {"short_seq_len": 0}, "short_seq_len must be >= 1"),
    (branches.FullAttentionBranch, {"long_statistics": 1}, "long_statistics must be a bool"),
    (branches.EtaBranch, {"num_bits": 24}, "num_bits must be one of"),
])
def test_branches_refuse_bad_arguments(cls, kwargs, message):
  with pytest.raises(ValueError, match=message):
    cls(embeddings=branches.FeatureEmbeddings(), **kwargs)


def test_statistics_are_appended_only_when_asked():
  history, mask = toy_history(3, seed=2)
  widths = {}
  for statistics in (True, False):
    embeddings = branches.FeatureEmbeddings(embedding_dim=4, side_embedding_dim=2)
    branch = branches.AvgPoolBranch(embeddings=embeddings, long_statistics=statistics,
                                    short_seq_len=6)
    item = tf.constant([1, 2, 3], tf.int64)
    category = tf.constant([1, 2, 3], tf.int64)
    candidates = {features.ITEM_ID.name: item, features.CATEGORY_ID.name: category,
                  branches.QUERY: embeddings.query(item, category)}
    widths[statistics] = branch(candidates, history, mask).shape[-1]
  assert widths[True] - widths[False] == history_statistics.num_statistics()
