"""The whole TFX pipeline on a tiny synthetic log (LocalDagRunner, SQLite MLMD,
DirectRunner multi-processing with 2 workers).

One scenario, in order, on one pipeline root:
  1. a run is killed once Transform has completed; the rerun resumes from
     the cached components, trains, blesses and pushes a model that loads in
     a process importing only TensorFlow and scores held-out examples;
  2. rerunning that date with the same settings trains and pushes nothing:
     the runner prints the pushed run's outcome from ML Metadata;
  3. a clearly worse model (avgpool, 1 step, no warm start) is not pushed and
     the served version stays; rerunning it reports the same refusal.
Separately: corrupt input (a garbage shard, a string in an id column,
histories longer than the schema allows) stops the run at the data gate,
before Transform; nothing is pushed.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from pipeline import configs
from pipeline import pipeline as pipeline_lib
from pipeline import run_report
from pipeline import schema_builder
from preprocessing import synthetic_world
from preprocessing import synthetic_writer

pytestmark = pytest.mark.e2e

MAX_SEQ_LEN = 64
DATE = "2026-10-31"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DATA_CACHED = ("ExampleGen", "StatisticsGen", "ExampleValidator", "DataGate", "Transform")


def _make_data(root: str) -> str:
  synthetic_writer.generate_to_dir(
      synthetic_world.SyntheticConfig(
          users=300, items=1000, categories=10, clusters=40, days=12,
          impression_days=4, eval_days=1, end_date=DATE,
          min_events_per_user=20, max_events_per_user=150,
      ),
      root,
  )
  return root


def _schema(path: str, bound: int) -> str:
  with open(path, "w") as f:
    f.write(schema_builder.schema_text(bound))
  return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
  root = tmp_path_factory.mktemp("pipeline")
  data = _make_data(str(root / "data"))
  schema = _schema(str(root / "schema.pbtxt"), MAX_SEQ_LEN)
  return {
      "root": root, "data": data, "schema": schema,
      "pipeline_root": str(root / "pipeline_root"),
      "serving": str(root / "serving"),
  }


def _flags(ws, **extra):
  values = {
      "data_root": ws["data"], "pipeline_root": ws["pipeline_root"],
      "serving_model_dir": ws["serving"], "date": DATE, "max_seq_len": MAX_SEQ_LEN,
      "schema_path": ws["schema"], "rolling_window_days": 4, "train_steps": 300,
      "model": "eta", "eval_steps": 4, "batch_size": 64,
  }
  values.update(extra)
  args = [f"--{k}={v}" for k, v in values.items()]
  return args + ["--hparam=top_k=16"]


def _run_cli(args, timeout=600):
  return subprocess.run(
      [sys.executable, "-m", "pipeline.local_runner", *args], cwd=REPO,
      capture_output=True, text=True, timeout=timeout,
  )


def _versions(serving_dir):
  if not os.path.isdir(serving_dir):
    return []
  return sorted(os.listdir(serving_dir))


def _score_in_isolation(model_dir, examples_glob):
  """Loads the pushed model in `python -I` (TensorFlow only) and scores eval examples."""
  code = (
      "import glob, json, sys\n"
      "import tensorflow as tf\n"
      "model = tf.saved_model.load(sys.argv[1])\n"
      "serve = model.signatures['serving_default']\n"
      "records = [r.numpy() for r in tf.data.TFRecordDataset(sorted(glob.glob(sys.argv[2])), compression_type='GZIP')]\n"
      "labels = [tf.train.Example.FromString(r).features.feature['label'].int64_list.value[0] for r in records]\n"
      "p = serve(examples=tf.constant(records))['probabilities'].numpy().reshape(-1).tolist()\n"
      "ours = sorted(m for m in sys.modules if m.split('.')[0] in ('pipeline', 'preprocessing', 'trainer'))\n"
      "print(json.dumps({'p': p, 'labels': labels, 'ours': ours}))\n"
  )
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  done = subprocess.run(
      [sys.executable, "-I", "-c", code, model_dir, examples_glob], cwd="/",
      capture_output=True, text=True, env=env, timeout=300,
  )
  assert done.returncode == 0, done.stderr[-3000:]
  return json.loads(done.stdout.strip().splitlines()[-1])


def _warmup_signatures(path):
  import tensorflow as tf
  from tensorflow_serving.apis import prediction_log_pb2

  return [
      prediction_log_pb2.PredictionLog.FromString(r.numpy()).predict_log.request.model_spec.signature_name
      for r in tf.data.TFRecordDataset(path)
  ]


def _auc(labels, scores):
  pairs = [(s, l) for s, l in zip(scores, labels)]
  pos = [s for s, l in pairs if l == 1]
  neg = [s for s, l in pairs if l == 0]
  wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
  return wins / (len(pos) * len(neg))


@pytest.fixture(scope="module")
def first_run(workspace):
  """Kills a run after Transform, then reruns it to completion."""
  metadata = os.path.join(workspace["pipeline_root"], "metadata.sqlite")
  started = time.time()
  process = subprocess.Popen(
      [sys.executable, "-m", "pipeline.local_runner", *_flags(workspace)],
      cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
      start_new_session=True,
  )
  killed_after = None
  try:
    while process.poll() is None and time.time() - started < 400:
      time.sleep(2)
      if not os.path.exists(metadata):
        continue
      try:
        store = run_report.connect(metadata)
        runs = run_report.run_ids(store)
        states = {
            n: run_report._state_name(e)  # pylint: disable=protected-access
            for n, e in run_report.node_executions(store, "eta-ctr", runs[-1]).items()
        } if runs else {}
      except Exception:  # pylint: disable=broad-except
        continue  # the writer holds the database; try again
      if states.get("Transform") == "COMPLETE":
        os.killpg(process.pid, signal.SIGKILL)
        killed_after = time.time() - started
        break
  finally:
    if process.poll() is None:
      os.killpg(process.pid, signal.SIGKILL)
    process.wait()
  assert killed_after is not None, "the first run never completed Transform"
  interrupted = run_report.report(metadata, "eta-ctr")
  assert "Pusher" not in interrupted.states
  assert _versions(workspace["serving"]) == []

  resumed_start = time.time()
  done = _run_cli(_flags(workspace))
  resumed_seconds = time.time() - resumed_start
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
  report = run_report.report(metadata, "eta-ctr")
  print(f"\ninterrupted after {killed_after:.0f} s; resumed run {resumed_seconds:.0f} s")
  print(done.stdout[-2000:])
  return {"report": report, "stdout": done.stdout, "interrupted": interrupted}


def test_interrupted_run_resumes_from_cache(first_run):
  states = first_run["report"].states
  for node in _DATA_CACHED:
    assert states[node] == "CACHED", states
  assert states["Trainer"] == "COMPLETE"


def test_full_run_pushes_a_model_that_loads_and_scores(workspace, first_run):
  report = first_run["report"]
  assert report.pushed and report.model_blessed and report.infra_blessed
  versions = _versions(workspace["serving"])
  assert len(versions) == 1 and versions[0].isdigit()
  served = os.path.join(workspace["serving"], versions[0])
  assert report.pushed_destination == served
  assert os.path.exists(os.path.join(served, "saved_model.pb"))
  warmup = os.path.join(served, "assets.extra", "tf_serving_warmup_requests")
  # 32 held-out examples in requests of 8, then one rank request (the model
  # has the rank signature), all replayed by the infra check before the push.
  assert _warmup_signatures(warmup) == ["serving_default"] * 4 + ["rank"]
  assert f"PUSHED to {served}" in first_run["stdout"]
  # The metrics the runner printed are the Evaluator's.
  candidate = report.metrics["candidate"]
  assert candidate["example_count"] > 100
  assert 0.5 < candidate["auc"] <= 1.0 and 0.5 < candidate["gauc"] <= 1.0
  eval_glob = os.path.join(
      workspace["pipeline_root"], "ExampleGen", "examples", "*", "Split-eval", "*.gz")
  scored = _score_in_isolation(served, eval_glob)
  assert scored["ours"] == []
  assert len(scored["p"]) == candidate["example_count"]
  assert all(0.0 <= p <= 1.0 for p in scored["p"])
  # The served model's AUC, recomputed by brute force, is the Evaluator's.
  assert _auc(scored["labels"], scored["p"]) == pytest.approx(candidate["auc"], abs=0.02)


def _artifact_counts(metadata):
  store = run_report.connect(metadata)
  return {
      "runs": run_report.run_ids(store),
      "models": len(store.get_artifacts_by_type("Model")),
      "pushed": len(store.get_artifacts_by_type("PushedModel")),
  }


def test_rerun_of_a_pushed_date_trains_and_pushes_nothing(workspace, first_run):
  metadata = os.path.join(workspace["pipeline_root"], "metadata.sqlite")
  before = _artifact_counts(metadata)
  versions = _versions(workspace["serving"])
  done = _run_cli(_flags(workspace))
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
  assert f"NOT RERUN: run {first_run['report'].run_id} already ran" in done.stdout
  served = os.path.join(workspace["serving"], versions[0])
  assert f"PUSHED to {served}" in done.stdout
  assert _artifact_counts(metadata) == before
  assert _versions(workspace["serving"]) == versions


def test_rerun_guard_needs_the_same_input_and_settings(workspace, first_run):
  from pipeline import rerun_guard

  values = {
      "data_root": workspace["data"], "pipeline_root": workspace["pipeline_root"],
      "serving_model_dir": workspace["serving"], "date": DATE,
      "schema_path": workspace["schema"], "rolling_window_days": 4,
      **configs.trainer_settings(
          {"max_seq_len": MAX_SEQ_LEN, "train_steps": 300, "model": "eta",
           "eval_steps": 4, "batch_size": 64}, {"top_k": 16}),
  }
  config = configs.PipelineConfig.from_dict(values)
  assert rerun_guard.completed_run(config) == first_run["report"].run_id
  assert rerun_guard.completed_run(config.replace(
      train_config=config.train_config.replace(train_steps=301))) is None
  # A rewritten input file of the span (new mtime: a new input fingerprint
  # for ExampleGen) is a new input: the guard lets the run happen.
  span_file = os.path.join(workspace["data"], "impressions", DATE.replace("-", "") + ".csv")
  stat = os.stat(span_file)
  os.utime(span_file, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5 * 10**9))
  try:
    assert rerun_guard.completed_run(config) is None
  finally:
    os.utime(span_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
  assert rerun_guard.completed_run(config) == first_run["report"].run_id


def test_worse_model_is_not_pushed(workspace, first_run):
  before = _versions(workspace["serving"])
  done = _run_cli(_flags(workspace, model="avgpool", train_steps=1, warm_start="false"))
  assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-3000:]
  report = run_report.report(
      os.path.join(workspace["pipeline_root"], "metadata.sqlite"), "eta-ctr")
  assert report.states["Trainer"] == "COMPLETE"
  assert report.model_blessed is False and not report.pushed
  assert any("auc" in f for f in report.validation_failures), report.validation_failures
  assert report.metrics["candidate"]["auc"] < report.metrics["baseline"]["auc"]
  assert "NOT PUSHED: the Evaluator did not bless the model" in done.stdout
  assert _versions(workspace["serving"]) == before
  # Three runs of one date made one span of examples (idempotent reruns).
  store = run_report.connect(os.path.join(workspace["pipeline_root"], "metadata.sqlite"))
  examples = [a for a in store.get_artifacts_by_type("Examples") if "/ExampleGen/" in a.uri]
  assert len(examples) == 1
  assert examples[0].custom_properties["span"].int_value == configs.span_of_date(configs.parse_date(DATE))
  # Rerunning the blocked run: the same refusal, from ML Metadata.
  metadata = os.path.join(workspace["pipeline_root"], "metadata.sqlite")
  counts = _artifact_counts(metadata)
  again = _run_cli(_flags(workspace, model="avgpool", train_steps=1, warm_start="false"))
  assert again.returncode == 3, again.stdout[-3000:] + again.stderr[-3000:]
  assert f"NOT RERUN: run {report.run_id} already ran" in again.stdout
  assert "NOT PUSHED: the Evaluator did not bless the model" in again.stdout
  assert _artifact_counts(metadata) == counts
  assert _versions(workspace["serving"]) == before


def test_corrupt_input_stops_before_training(tmp_path):
  data = _make_data(str(tmp_path / "data"))
  with open(os.path.join(data, "impressions", "20261030.csv"), "a") as f:
    f.write("abc,12,3,1793318400,1\n")  # a string in the user id column
    for i in range(200):  # a garbage shard
      f.write(f"\x00\x13garbage{i};;{'%' * (i % 7)}\n")
  # Histories are built up to 64 long; this schema allows 50.
  schema = _schema(str(tmp_path / "schema50.pbtxt"), 50)
  config = configs.PipelineConfig(
      data_root=data, pipeline_root=str(tmp_path / "root"),
      serving_model_dir=str(tmp_path / "serving"), date=configs.parse_date(DATE),
      schema_path=schema, rolling_window_days=4,
      **configs.trainer_settings({"max_seq_len": MAX_SEQ_LEN, "train_steps": 5}),
  )
  from tfx import v1 as tfx

  with pytest.raises(Exception) as raised:
    tfx.orchestration.LocalDagRunner().run(pipeline_lib.create_pipeline(
        config, tfx.orchestration.metadata.sqlite_metadata_connection_config(
            config.resolved_metadata_path)))
  message = str(raised.value)
  assert "DataValidationError" in type(raised.value).__name__ or "failed validation" in message
  assert "hist_item_ids" in message and "FEATURE_TYPE_HIGH_NUMBER_VALUES" in message
  assert "ingestion rejected" in message
  report = run_report.report(config.resolved_metadata_path, "eta-ctr")
  assert report.states["DataGate"] == "FAILED"
  for node in ("Transform", "Trainer", "Evaluator", "Pusher"):
    assert node not in report.states
  assert _versions(config.serving_model_dir) == []


def test_a_lost_half_day_stops_before_transform(tmp_path):
  """The later half of the eval day's rows is missing from both logs (every
  row left is valid, so ExampleValidator and the reject fraction see
  nothing): the volume check of the data gate stops the run, exit 3, nothing
  trained."""
  data = _make_data(str(tmp_path / "data"))
  day_file = DATE.replace("-", "") + ".csv"
  with open(os.path.join(data, "impressions", day_file)) as f:
    impressions = f.read().splitlines()
  # The median impression time of the day: half the impressions come after it.
  cut = sorted(int(l.split(",")[3]) for l in impressions[1:])[len(impressions) // 2]
  for log, column in (("impressions", 3), ("behaviors", 4)):
    path = os.path.join(data, log, day_file)
    with open(path) as f:
      lines = f.read().splitlines()
    kept = [l for l in lines if not l[:1].isdigit() or int(l.split(",")[column]) < cut]
    assert len(lines) * 0.3 < len(kept) < len(lines) * 0.7, (log, len(lines), len(kept))
    with open(path, "w") as f:
      f.write("\n".join(kept) + "\n")
  ws = {"data": data, "pipeline_root": str(tmp_path / "root"),
        "serving": str(tmp_path / "serving"),
        "schema": _schema(str(tmp_path / "schema.pbtxt"), MAX_SEQ_LEN)}
  done = _run_cli(_flags(ws, train_steps=5))
  assert done.returncode == 3, done.stdout[-3000:] + done.stderr[-3000:]
  assert "DataGate=FAILED" in done.stdout and "RUNNING" not in done.stdout
  assert "NOT PUSHED: the data gate stopped the run" in done.stdout
  assert f"volume: {DATE}: " in done.stderr and " impressions, " in done.stderr
  report = run_report.report(os.path.join(ws["pipeline_root"], "metadata.sqlite"), "eta-ctr")
  for node in ("Transform", "Trainer", "Pusher"):
    assert node not in report.states
  assert _versions(ws["serving"]) == []


def test_runner_one_line_errors_and_help(tmp_path):
  (tmp_path / "a_file").write_text("x")
  ws = {"data": str(tmp_path), "pipeline_root": str(tmp_path / "a_file" / "root"),
        "serving": str(tmp_path / "serving"),
        "schema": _schema(str(tmp_path / "schema.pbtxt"), MAX_SEQ_LEN)}
  for args, message in (
      (_flags(ws), "local_runner: error: --pipeline_root "),
      (_flags(dict(ws, pipeline_root=str(tmp_path / "r")), max_seq_len=70),
       "local_runner: error: max_seq_len 70 differs from the schema's history bound 64"),
      (_flags(dict(ws, pipeline_root=str(tmp_path / "r")), min_volume_ratio=2),
       "local_runner: error: min_volume_ratio must be a number in [0, 1)"),
  ):
    done = _run_cli(args, timeout=300)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith(message), done.stderr[-3000:]
  assert _run_cli(["--help"], timeout=300).returncode == 0
