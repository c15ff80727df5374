"""The TF Serving client's command line: one user's request, printed or sent.

Builds the history of `--user_id` from a Taobao-format behaviour log by
ingestion's rule (`serving.requests`), a `rank` request for `--candidates`
(or one tf.Example each for `serving_default`), and prints its REST body, or
sends it to `--server` over gRPC or REST (`serving.transport`) and prints the
probabilities. serving/README.md, "The client", has a worked request.

Usage (prints the REST body; add --server=HOST:PORT to send it):
  python -m serving.client --behavior_log=DIR/behaviors/*.csv --user_id=42 \\
      --candidates=1001:7,1002:7 --request_timestamp=1793491200

Importing it loads no Beam, TFX or TensorFlow (TensorFlow's protos come only
when a gRPC request or a tf.Example is built).
"""

from __future__ import annotations

import json
import sys

from absl import app
from absl import flags

from preprocessing import features
from preprocessing import flag_parsing
from serving import requests
from serving import transport

FLAGS = flags.FLAGS


def _parse_candidates(text: str) -> tuple[list[int], list[int]]:
  """(item_ids, category_ids) of "ITEM:CATEGORY,ITEM:CATEGORY"."""
  items, categories = [], []
  for i, pair in enumerate(p for p in text.split(",") if p.strip()):
    parts = pair.split(":")
    try:
      item, category = (int(v) for v in parts)
    except ValueError:
      raise requests.RequestError(
          f"candidate {i} {pair!r} must be ITEM_ID:CATEGORY_ID (integers)"
      ) from None
    items.append(item)
    categories.append(category)
  return items, categories


def _define_flags():
  """Defined when run as a program only: importing this module (tests, other
  tools) leaves the process-wide absl FLAGS as it was."""
  flags.DEFINE_string("behavior_log", None,
                      "Glob of Taobao-format behaviour CSVs (may be .gz).")
  flags.mark_flag_as_required("behavior_log")
  flags.DEFINE_integer("user_id", None, "The user to rank for.")
  flags.mark_flag_as_required("user_id")
  flags.DEFINE_string("candidates", None,
                      "Comma-separated ITEM_ID:CATEGORY_ID pairs.")
  flags.mark_flag_as_required("candidates")
  flags.DEFINE_integer("request_timestamp", None,
                       "Unix seconds of the request; the history is what "
                       "came strictly before it.")
  flags.mark_flag_as_required("request_timestamp")
  flags.DEFINE_enum("signature", features.RANK_SIGNATURE,
                    [features.RANK_SIGNATURE,
                     features.SERVING_DEFAULT_SIGNATURE],
                    "Which signature to call.")
  flags.DEFINE_integer("max_seq_len", features.DEFAULT_MAX_SEQ_LEN,
                       "The model's max_seq_len: the most recent behaviours "
                       "kept.")
  flags.DEFINE_boolean("skip_rejected_rows", False,
                       "Skip log rows that ingestion rejects (as ingestion "
                       "does), listing each on stderr; default: stop at the "
                       "first with its file, line and reason.")
  flags.DEFINE_string("server", None,
                      "HOST:PORT to send to (8500 gRPC, 8501 REST); unset: "
                      "print the request.")
  flags.DEFINE_enum("protocol", "grpc", ["grpc", "rest"], "How to send.")
  flags.DEFINE_string("model_name", transport.DEFAULT_MODEL_NAME,
                      "Model name.")
  flags.DEFINE_integer("model_version", None, "Pin a version.")
  flags.DEFINE_string("model_version_label", None,
                      "Pin a version label (e.g. stable, canary).")
  flags.DEFINE_float("timeout_s", 10.0, "Request timeout in seconds.")


def _rank_request_from_log() -> requests.RankRequest:
  """The flags' rank request, its history from --behavior_log; rejected rows
  skipped are listed on stderr."""
  item_ids, category_ids = _parse_candidates(FLAGS.candidates)
  rejected = [] if FLAGS.skip_rejected_rows else None
  hist_items, hist_categories, hist_times, hist_types = (
      requests.history_from_log(
          FLAGS.behavior_log, FLAGS.user_id, FLAGS.request_timestamp,
          FLAGS.max_seq_len, rejected=rejected))
  for reject in rejected or ():
    print(f"skipped {reject.source}: {reject.reason}: {reject.detail}",
          file=sys.stderr)
  if rejected:
    print(f"skipped {len(rejected)} rows that ingestion rejects",
          file=sys.stderr)
  return requests.RankRequest(
      hist_items, hist_categories, hist_times, item_ids, category_ids,
      FLAGS.request_timestamp, FLAGS.max_seq_len,
      hist_behavior_types=hist_types)


def main(argv):
  flag_parsing.refuse_arguments(argv)
  try:
    rank = _rank_request_from_log()
    pin = dict(version=FLAGS.model_version,
               version_label=FLAGS.model_version_label)
    if FLAGS.signature == features.RANK_SIGNATURE:
      body = transport.rank_rest_body(rank)
      make_grpc = lambda: transport.rank_predict_request(
          rank, FLAGS.model_name, **pin)
    else:
      examples = requests.examples_for_candidates(rank, FLAGS.user_id)
      body = transport.examples_rest_body(examples)
      make_grpc = lambda: transport.examples_predict_request(
          examples, FLAGS.model_name, **pin)
    if FLAGS.server is None:
      print(json.dumps(body))
      return
    if FLAGS.protocol == "rest":
      probabilities = transport.send_rest(
          body, transport.rest_url(FLAGS.server, FLAGS.model_name, **pin),
          FLAGS.timeout_s)
    else:
      probabilities = transport.send_grpc(make_grpc(), FLAGS.server,
                                          FLAGS.timeout_s)
  except requests.LogError as error:
    raise SystemExit(f"bad behaviour log: {error}") from None
  except requests.RequestError as error:
    raise app.UsageError(f"bad request: {error}") from None
  except transport.ServerError as error:
    raise SystemExit(f"server error: {error}") from None
  print(json.dumps({"item_ids": list(rank.item_ids),
                    features.PROBABILITIES_KEY: probabilities}))


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=flag_parsing.parse_flags)
