"""The synthetic data set's world: its config, the simulated users and
catalogue, the click model, and `generate`, which draws the logs in memory.

The world it simulates:
- Items belong to clusters and clusters to categories (categories are
  coarser), so an item embedding can learn a cluster that no id reveals.
  Popularity is log-normal per cluster and per item.
- Each user has several interests (clusters). Some are persistent, some are
  recent, and some are dormant: active only in the first part of the time
  range. Each interest has a few favourite items the user returns to, and
  now and then the user re-visits a favourite of any interest, dormant ones
  included (an item seen weeks ago).
- Behaviour times come in sessions with a diurnal rhythm; gaps inside a
  session are whole seconds, so some behaviours share a second.
- Impressions are shown in the last days. Their click probability depends on
  the WHOLE history: dormant interests come back (a candidate from a dormant
  interest is as attractive as one from a current interest), favourites and
  items the user has seen at any earlier time are clicked more. The last 50
  behaviours mostly miss the dormant interests, so a model of the last 50
  cannot recover that part of the signal.

`preprocessing/synthetic_writer.py` writes the logs to files;
`python -m preprocessing.synthetic` (preprocessing/synthetic.py) is the
command line.
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import Any, Mapping

import numpy as np

from preprocessing import features
from preprocessing import typed_config

# Share of pv, cart, fav, buy in the Taobao UserBehavior data set.
BEHAVIOR_PROBABILITIES = (0.895, 0.055, 0.029, 0.021)
# Upper bound on behaviours per user; guards against a typo that would
# allocate an absurd amount of memory.
MAX_EVENTS_PER_USER_LIMIT = 1_000_000
MAX_INTERESTS = 8
MAX_FAVOURITES = 6
# Events are generated in chunks of this many to bound peak memory.
_CHUNK_EVENTS = 1 << 20


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Size and shape of the synthetic world.

  Attributes:
    users: number of users (>= 1). 4,000 by default: with the same model
      settings eta reached 0.8175 AUC on the eval day at 2,000 users and
      0.8199 at 4,000 (3 seeds each), the whole-history GBDT 0.8216 and
      0.8225 (README), and the demo still runs in about 3 minutes.
    seed: seed of the numpy generator; the same config writes the same files.
    items: catalogue size (>= clusters).
    categories: number of categories (>= 1, <= clusters).
    clusters: latent item clusters; each belongs to one category.
    days: days of behaviour logs, ending on `end_date` (inclusive).
    impression_days: the last days that also have impressions (<= days).
    eval_days: the last impression days that form the eval split
      (< impression_days, so that there is a train split).
    end_date: last day, 'YYYY-MM-DD' (UTC).
    min_events_per_user: fewest behaviours of a user.
    max_events_per_user: most behaviours of a user; the count is log-uniform
      between the two, so long histories are rarer than short ones.
    impressions_per_user_day: mean impressions per user per impression day
      (Poisson).
  """

  users: int = 4_000
  seed: int = 0
  items: int = 10_000
  categories: int = 50
  clusters: int = 400
  days: int = 30
  impression_days: int = 5
  eval_days: int = 1
  end_date: str = "2026-10-31"
  min_events_per_user: int = 50
  max_events_per_user: int = 500
  impressions_per_user_day: float = 3.0

  def __post_init__(self):
    typed_config.check_field_types(self)
    typed_config.check_int(self, "users", 1)
    typed_config.check_int(self, "categories", 1)
    if self.clusters < self.categories:
      raise typed_config.ConfigError(
          f"clusters ({self.clusters}) must be >= categories "
          f"({self.categories}): categories are coarser than clusters")
    if self.items < self.clusters:
      raise typed_config.ConfigError(
          f"items ({self.items}) must be >= clusters ({self.clusters})")
    typed_config.check_int(self, "days", 1)
    if not 1 <= self.eval_days < self.impression_days <= self.days:
      raise typed_config.ConfigError(
          "need 1 <= eval_days < impression_days <= days, got eval_days="
          f"{self.eval_days}, impression_days={self.impression_days}, "
          f"days={self.days}")
    typed_config.check_int(self, "min_events_per_user", 1)
    if self.max_events_per_user < self.min_events_per_user:
      raise typed_config.ConfigError(
          f"max_events_per_user ({self.max_events_per_user}) must be >= "
          f"min_events_per_user ({self.min_events_per_user})")
    if self.max_events_per_user > MAX_EVENTS_PER_USER_LIMIT:
      raise typed_config.ConfigError(
          f"max_events_per_user must be <= {MAX_EVENTS_PER_USER_LIMIT}, got "
          f"{self.max_events_per_user}")
    if not self.impressions_per_user_day > 0:
      raise typed_config.ConfigError(
          "impressions_per_user_day must be > 0, got "
          f"{self.impressions_per_user_day}")
    typed_config.check_int(self, "seed", 0)
    self.end_day()  # validates the date format

  def end_day(self) -> datetime.date:
    try:
      return datetime.date.fromisoformat(self.end_date)
    except ValueError:
      raise typed_config.ConfigError(
          f"end_date must be YYYY-MM-DD, got {self.end_date!r}") from None

  def first_day_timestamp(self) -> int:
    """Unix seconds of 00:00 UTC of the first behaviour day."""
    first = self.end_day() - datetime.timedelta(days=self.days - 1)
    return int(datetime.datetime(
        first.year, first.month, first.day,
        tzinfo=datetime.timezone.utc).timestamp())

  @classmethod
  def from_dict(cls, values: Mapping[str, Any]) -> "SyntheticConfig":
    """Builds a config from a mapping; unknown keys are an error."""
    return typed_config.from_dict(cls, values, "SyntheticConfig keys")


@dataclasses.dataclass(frozen=True)
class ClickModel:
  """Logit of an impression's click probability (weights of the planted signal).

  logit = bias + cluster * (summed weight of the user's interests in the
  candidate's cluster, dormant ones included) + category * (the candidate's
  category is one of the user's interests' but not its cluster)
  + favourite * (the candidate is a favourite item of an interest)
  + seen * (the user had a behaviour on the candidate item before)
  + popularity * (standardised log popularity of the item).
  """

  bias: float = -3.5
  cluster: float = 1.8
  category: float = 0.6
  favourite: float = 0.9
  seen: float = 0.7
  popularity: float = 0.25


@dataclasses.dataclass(frozen=True)
class SyntheticLogs:
  """The generated logs as column arrays (raw ids, Unix seconds).

  Behaviour columns are sorted by (timestamp, user_id); impression columns
  too. `behavior_type` is the index into features.BEHAVIOR_TYPES.
  """

  behavior_user_id: np.ndarray
  behavior_item_id: np.ndarray
  behavior_category_id: np.ndarray
  behavior_type: np.ndarray
  behavior_timestamp: np.ndarray
  impression_user_id: np.ndarray
  impression_item_id: np.ndarray
  impression_category_id: np.ndarray
  impression_timestamp: np.ndarray
  impression_clicked: np.ndarray
  impression_click_probability: np.ndarray


@dataclasses.dataclass(frozen=True)
class _World:
  """Latent state: catalogue and user interests (indices, not raw ids)."""

  item_cluster: np.ndarray  # [items], items sorted by cluster
  cluster_category: np.ndarray  # [clusters]
  item_log_popularity: np.ndarray  # [items]
  item_cumulative_weight: np.ndarray  # [items], cumsum of popularity
  cluster_first_item: np.ndarray  # [clusters + 1] offsets into items
  cluster_cumulative_weight: np.ndarray  # [clusters]
  interest_cluster: np.ndarray  # [users, MAX_INTERESTS]
  interest_valid: np.ndarray  # [users, MAX_INTERESTS] bool
  interest_weight: np.ndarray  # [users, MAX_INTERESTS]
  interest_start: np.ndarray  # [users, MAX_INTERESTS] timeline fraction
  interest_end: np.ndarray  # [users, MAX_INTERESTS]
  favourites: np.ndarray  # [users, MAX_INTERESTS, MAX_FAVOURITES] items
  favourite_count: np.ndarray  # [users, MAX_INTERESTS]
  user_raw_id: np.ndarray
  item_raw_id: np.ndarray
  category_raw_id: np.ndarray


def _sample_weighted(rng, cumulative, low, high, size=None):
  """Indices drawn from weights given as a cumulative sum, within [low, high).

  `low`/`high` are index offsets (arrays or ints); each draw falls in its own
  range in proportion to the weights there.
  """
  start = np.where(low > 0, cumulative[np.maximum(low - 1, 0)], 0.0)
  total = cumulative[high - 1] - start
  target = start + rng.random(size) * total
  index = np.searchsorted(cumulative, target, side="right")
  return np.clip(index, low, high - 1)


def _diurnal_seconds(rng, size):
  """Seconds into the day: evening-heavy (70% around 20:30 UTC) plus uniform."""
  evening = rng.normal(20.5 * 3600, 2.5 * 3600, size) % features.SECONDS_PER_DAY
  uniform = rng.random(size) * features.SECONDS_PER_DAY
  seconds = np.where(rng.random(size) < 0.7, evening, uniform)
  return np.minimum(seconds.astype(np.int64), features.SECONDS_PER_DAY - 1)


def _make_world(config: SyntheticConfig, rng: np.random.Generator) -> _World:
  n_users, n_items = config.users, config.items
  n_clusters, n_categories = config.clusters, config.categories
  # Every category gets a cluster and every cluster an item.
  cluster_category = np.concatenate([
      np.arange(n_categories),
      rng.integers(0, n_categories, n_clusters - n_categories)])
  rng.shuffle(cluster_category)
  item_cluster = np.sort(np.concatenate([
      np.arange(n_clusters), rng.integers(0, n_clusters, n_items - n_clusters)
  ]))
  cluster_first_item = np.searchsorted(item_cluster, np.arange(n_clusters + 1))
  item_log_popularity = rng.normal(0.0, 1.0, n_items)
  item_cumulative_weight = np.cumsum(np.exp(item_log_popularity))
  cluster_cumulative_weight = np.cumsum(np.exp(rng.normal(0.0, 1.0, n_clusters)))

  # Interests: up to MAX_INTERESTS clusters per user drawn by popularity;
  # a repeated cluster is dropped (keeps the first).
  shape = (n_users, MAX_INTERESTS)
  interest_cluster = _sample_weighted(
      rng, cluster_cumulative_weight, 0, n_clusters, shape)
  wanted = np.clip(2 + rng.poisson(2.0, n_users), 2, MAX_INTERESTS)
  valid = np.arange(MAX_INTERESTS)[None, :] < wanted[:, None]
  repeated = (interest_cluster[:, :, None] == interest_cluster[:, None, :])
  repeated &= np.tri(MAX_INTERESTS, k=-1, dtype=bool)[None, :, :]
  valid &= ~repeated.any(axis=2)
  # Kind: 0 persistent, 1 dormant (only early on), 2 recent (only late).
  kind = rng.choice(3, size=shape, p=(0.25, 0.45, 0.30))
  kind[:, 0] = 0  # everyone keeps at least one persistent interest
  start = np.where(kind == 2, rng.uniform(0.5, 0.85, shape), 0.0)
  end = np.where(kind == 1, rng.uniform(0.25, 0.55, shape), 1.0)
  weight = rng.lognormal(0.0, 0.4, shape)

  fav_shape = shape + (MAX_FAVOURITES,)
  low = cluster_first_item[interest_cluster][:, :, None]
  high = cluster_first_item[interest_cluster + 1][:, :, None]
  favourites = _sample_weighted(
      rng, item_cumulative_weight, np.broadcast_to(low, fav_shape),
      np.broadcast_to(high, fav_shape), fav_shape)
  favourite_count = np.clip(1 + rng.poisson(2.0, shape), 1, MAX_FAVOURITES)

  return _World(
      item_cluster=item_cluster,
      cluster_category=cluster_category,
      item_log_popularity=item_log_popularity,
      item_cumulative_weight=item_cumulative_weight,
      cluster_first_item=cluster_first_item,
      cluster_cumulative_weight=cluster_cumulative_weight,
      interest_cluster=interest_cluster,
      interest_valid=valid,
      interest_weight=weight,
      interest_start=start,
      interest_end=end,
      favourites=favourites,
      favourite_count=favourite_count,
      user_raw_id=_sparse_raw_ids(rng, n_users),
      item_raw_id=_sparse_raw_ids(rng, n_items),
      category_raw_id=_sparse_raw_ids(rng, n_categories),
  )


def _sparse_raw_ids(rng: np.random.Generator, count: int) -> np.ndarray:
  """`count` distinct raw ids, sparse and shuffled, as in real logs."""
  return 1 + rng.choice(10 * count + 1000, count, replace=False)


def _behavior_times(config, rng, events_per_user):
  """Unix seconds of every behaviour, grouped by user, sorted within a user."""
  n_users = config.users
  range_start = config.first_day_timestamp()
  range_end = range_start + config.days * features.SECONDS_PER_DAY
  # Sessions of ~6 behaviours, at most ~4 sessions a day on average.
  session_size = np.maximum(6.0, events_per_user / (4.0 * config.days))
  sessions_per_user = np.maximum(
      1, np.round(events_per_user / session_size)).astype(np.int64)
  session_offset = np.concatenate([[0], np.cumsum(sessions_per_user)])
  event_user = np.repeat(np.arange(n_users), events_per_user)
  event_session = session_offset[event_user] + (
      rng.random(event_user.size) * sessions_per_user[event_user]
  ).astype(np.int64)
  order = np.argsort(event_session, kind="stable")
  event_session = event_session[order]
  # Whole-second gaps (mean ~40 s): some behaviours share a second.
  gaps = np.floor(rng.exponential(40.0, event_user.size)).astype(np.int64)
  total = np.cumsum(gaps)
  first = np.searchsorted(event_session, event_session, side="left")
  offset_in_session = total - total[first]
  duration = np.zeros(session_offset[-1], dtype=np.int64)
  np.maximum.at(duration, event_session, offset_in_session)
  n_sessions = session_offset[-1]
  session_start = (range_start
                   + rng.integers(0, config.days, n_sessions) * features.SECONDS_PER_DAY
                   + _diurnal_seconds(rng, n_sessions))
  # A session that would run past the range ends at its last second.
  session_start = np.minimum(session_start, range_end - 1 - duration)
  session_start = np.maximum(session_start, range_start)
  times = np.minimum(session_start[event_session] + offset_in_session,
                     range_end - 1)
  # Back to user order (event_session is sorted, so users stay contiguous),
  # then sort each user's times.
  user_of_sorted = event_user[order]
  by_user_time = np.lexsort((times, user_of_sorted))
  return user_of_sorted[by_user_time], times[by_user_time]


def _behavior_content(config, rng, world, event_user, event_time):
  """Item index and behaviour type of each behaviour."""
  range_start = config.first_day_timestamp()
  fraction = (event_time - range_start) / (config.days * features.SECONDS_PER_DAY)
  items = np.empty(event_user.size, dtype=np.int64)
  types = np.empty(event_user.size, dtype=np.int64)
  n_clusters = config.clusters
  base_types = np.cumsum(BEHAVIOR_PROBABILITIES)
  # Favourites get twice the cart/fav/buy rate.
  favourite_p = np.array(BEHAVIOR_PROBABILITIES) * np.array([1, 2, 2, 2])
  favourite_p[0] = 1.0 - favourite_p[1:].sum()
  favourite_types = np.cumsum(favourite_p)
  for lo in range(0, event_user.size, _CHUNK_EVENTS):
    hi = min(lo + _CHUNK_EVENTS, event_user.size)
    user = event_user[lo:hi]
    t = fraction[lo:hi, None]
    size = hi - lo
    active = (world.interest_valid[user] & (world.interest_start[user] <= t)
              & (t <= world.interest_end[user]))
    weights = np.where(active, world.interest_weight[user], 0.0)
    cumulative = np.cumsum(weights, axis=1)
    draw = rng.random(size) * cumulative[:, -1]
    slot = np.minimum((cumulative <= draw[:, None]).sum(axis=1),
                      MAX_INTERESTS - 1)
    # A re-visit reaches any interest's favourites, dormant ones included.
    revisit = rng.random(size) < 0.04
    any_slot_weights = world.interest_valid[user].astype(np.float64)
    any_cumulative = np.cumsum(any_slot_weights, axis=1)
    any_slot = np.minimum(
        (any_cumulative <= (rng.random(size) * any_cumulative[:, -1])[:, None]
         ).sum(axis=1), MAX_INTERESTS - 1)
    slot = np.where(revisit, any_slot, slot)
    explore = (rng.random(size) < 0.08) | (cumulative[:, -1] <= 0)
    explore &= ~revisit
    favourite = revisit | (rng.random(size) < 0.25)
    favourite &= ~explore

    cluster = world.interest_cluster[user, slot]
    random_cluster = _sample_weighted(
        rng, world.cluster_cumulative_weight, 0, n_clusters, size)
    cluster = np.where(explore, random_cluster, cluster)
    in_cluster = _sample_weighted(
        rng, world.item_cumulative_weight, world.cluster_first_item[cluster],
        world.cluster_first_item[cluster + 1], size)
    pick = (rng.random(size) * world.favourite_count[user, slot]).astype(
        np.int64)
    favourite_item = world.favourites[user, slot, pick]
    items[lo:hi] = np.where(favourite, favourite_item, in_cluster)
    draw = rng.random(size)
    types[lo:hi] = np.where(
        favourite,
        np.searchsorted(favourite_types, draw, side="right"),
        np.searchsorted(base_types, draw, side="right"))
  np.minimum(types, len(features.BEHAVIOR_TYPES) - 1, out=types)
  return items, types


def _seen_before(event_user, event_item, event_time, n_items, user, item,
                 time):
  """Whether `user` had a behaviour on `item` strictly before `time`."""
  # One sorted key per (user, item, time); a query is seen when the
  # first behaviour of its (user, item) is earlier than its time.
  pair = event_user.astype(np.int64) * n_items + event_item
  order = np.lexsort((event_time, pair))
  pair_sorted, time_sorted = pair[order], event_time[order]
  query = user.astype(np.int64) * n_items + item
  first = np.searchsorted(pair_sorted, query, side="left")
  inside = first < pair_sorted.size
  first_clipped = np.minimum(first, pair_sorted.size - 1)
  return (inside & (pair_sorted[first_clipped] == query)
          & (time_sorted[first_clipped] < time))


def _impressions(config, rng, world, click_model, event_user, event_item,
                 event_time):
  """Impression rows (indices) with their true click probability and click."""
  n_users = config.users
  first_impression_day = config.days - config.impression_days
  counts = rng.poisson(config.impressions_per_user_day,
                       (n_users, config.impression_days))
  user = np.repeat(np.repeat(np.arange(n_users), config.impression_days),
                   counts.ravel())
  day = np.repeat(np.tile(np.arange(config.impression_days), n_users),
                  counts.ravel()) + first_impression_day
  time = (config.first_day_timestamp() + day * features.SECONDS_PER_DAY
          + _diurnal_seconds(rng, user.size))
  size = user.size

  # Candidates: half from one of the user's interests (any kind, so dormant
  # interests get shown), a third of those a favourite; the rest from the
  # whole catalogue by popularity.
  valid = world.interest_valid[user].astype(np.float64)
  cumulative = np.cumsum(valid, axis=1)
  slot = np.minimum(
      (cumulative <= (rng.random(size) * cumulative[:, -1])[:, None]).sum(
          axis=1), MAX_INTERESTS - 1)
  cluster = world.interest_cluster[user, slot]
  in_cluster = _sample_weighted(
      rng, world.item_cumulative_weight, world.cluster_first_item[cluster],
      world.cluster_first_item[cluster + 1], size)
  pick = (rng.random(size) * world.favourite_count[user, slot]).astype(
      np.int64)
  favourite_item = world.favourites[user, slot, pick]
  from_interest = rng.random(size) < 0.5
  item = np.where(rng.random(size) < 1 / 3, favourite_item, in_cluster)
  anywhere = _sample_weighted(
      rng, world.item_cumulative_weight, 0, config.items, size)
  item = np.where(from_interest, item, anywhere)

  item_cluster = world.item_cluster[item]
  item_category = world.cluster_category[item_cluster]
  interest_valid = world.interest_valid[user]
  same_cluster = interest_valid & (
      world.interest_cluster[user] == item_cluster[:, None])
  cluster_affinity = np.where(same_cluster, world.interest_weight[user],
                              0.0).sum(axis=1)
  same_category = interest_valid & (
      world.cluster_category[world.interest_cluster[user]]
      == item_category[:, None])
  category_only = same_category.any(axis=1) & ~same_cluster.any(axis=1)
  fav_valid = (np.arange(MAX_FAVOURITES)[None, None, :]
               < world.favourite_count[user][:, :, None])
  is_favourite = ((world.favourites[user] == item[:, None, None]) & fav_valid
                  & interest_valid[:, :, None]).any(axis=(1, 2))
  seen = _seen_before(event_user, event_item, event_time, config.items,
                      user, item, time)
  popularity = world.item_log_popularity[item]
  logit = (click_model.bias + click_model.cluster * cluster_affinity
           + click_model.category * category_only
           + click_model.favourite * is_favourite + click_model.seen * seen
           + click_model.popularity * popularity)
  # Rounded so the truth file holds exactly the probabilities used.
  probability = np.round(1.0 / (1.0 + np.exp(-logit)), 6)
  clicked = (rng.random(size) < probability).astype(np.int64)
  return user, item, item_category, time, clicked, probability


def generate(config: SyntheticConfig,
             click_model: ClickModel = ClickModel()) -> SyntheticLogs:
  """Generates the logs in memory (deterministic in `config.seed`)."""
  rng = np.random.default_rng(config.seed)
  world = _make_world(config, rng)
  low, high = config.min_events_per_user, config.max_events_per_user
  events_per_user = np.floor(np.exp(rng.uniform(
      np.log(low), np.log(high + 1), config.users))).astype(np.int64)
  events_per_user = np.clip(events_per_user, low, high)
  event_user, event_time = _behavior_times(config, rng, events_per_user)
  event_item, event_type = _behavior_content(
      config, rng, world, event_user, event_time)
  user, item, category, time, clicked, probability = _impressions(
      config, rng, world, click_model, event_user, event_item, event_time)

  behavior_order = np.lexsort((event_user, event_time))
  impression_order = np.lexsort((user, time))
  event_item = event_item[behavior_order]
  item = item[impression_order]
  return SyntheticLogs(
      behavior_user_id=world.user_raw_id[event_user[behavior_order]],
      behavior_item_id=world.item_raw_id[event_item],
      behavior_category_id=world.category_raw_id[
          world.cluster_category[world.item_cluster[event_item]]],
      behavior_type=event_type[behavior_order],
      behavior_timestamp=event_time[behavior_order],
      impression_user_id=world.user_raw_id[user[impression_order]],
      impression_item_id=world.item_raw_id[item],
      impression_category_id=world.category_raw_id[category[impression_order]],
      impression_timestamp=time[impression_order],
      impression_clicked=clicked[impression_order],
      impression_click_probability=probability[impression_order],
  )


def item_latents(config: SyntheticConfig) -> dict[str, np.ndarray]:
  """The catalogue's latent state, by raw item id, that `generate` draws.

  The world is the generator's first draw from `config.seed`, so it is
  recomputed here exactly (nothing else is drawn). For benchmarks that ask
  what a model could reach if it knew the latent state; no model reads it.

  Returns:
    `item_id` (raw ids as written to the logs), `cluster` (its latent
    cluster index) and `log_popularity` (the N(0, 1) log popularity the
    click model uses), int64 / int64 / float64 [items].
  """
  world = _make_world(config, np.random.default_rng(config.seed))
  return {
      "item_id": world.item_raw_id.astype(np.int64),
      "cluster": world.item_cluster.astype(np.int64),
      "log_popularity": world.item_log_popularity,
  }
