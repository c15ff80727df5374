"""The standalone trainer: library in-process, CLI end to end."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from trainer import config
from trainer import metrics
from trainer import standalone
from trainer import toy_data

REQUIRED_KEYS = {
    "auc", "gauc", "logloss", "mean_prediction", "mean_label", "examples_per_sec_train",
}
REPO = pathlib.Path(__file__).resolve().parent.parent


def write_split(tmp_path, train_examples=384, eval_examples=128):
  examples = toy_data.make_examples(
      toy_data.ToyDataConfig(num_examples=train_examples + eval_examples, num_users=16,
                             max_history=70, seed=11)
  )
  for split, rows in (("train", examples[:train_examples]), ("eval", examples[train_examples:])):
    (tmp_path / split).mkdir()
    for shard in range(2):
      toy_data.write_tfrecords(
          str(tmp_path / split / f"part-{shard}.tfrecord.gz"), rows[shard::2]
      )
  return examples[train_examples:]


def examples_of(tmp_path, split):
  """The raw examples written_split put into a split (re-read, order aside)."""
  examples = toy_data.make_examples(
      toy_data.ToyDataConfig(num_examples=384 + 128, num_users=16, max_history=70, seed=11)
  )
  return examples[:384] if split == "train" else examples[384:]


def test_train_and_evaluate_writes_metrics_that_the_export_reproduces(tmp_path):
  eval_examples = write_split(tmp_path)
  output_dir = str(tmp_path / "out")
  model_config = config.ModelConfig(
      model="din", max_seq_len=64, embedding_dim=8, mlp_units=(16,), din_hidden_units=(8,)
  )
  train_config = config.TrainConfig(batch_size=32, train_steps=12, steps_per_epoch=6,
                                    learning_rate=1e-2)
  result = standalone.train_and_evaluate(
      str(tmp_path / "train" / "*.gz"), str(tmp_path / "eval" / "*.gz"), output_dir,
      model_config, train_config, eval_batch_size=50,
  )
  written = json.loads((tmp_path / "out" / standalone.METRICS_FILE).read_text())
  assert REQUIRED_KEYS <= set(written)
  assert written["examples"] == len(eval_examples)
  assert written["train_steps_run"] == 12
  # Early stopping (on by default) validated on the newest TRAINING day.
  train_days = sorted({e["timestamp"] // 86_400 for e in examples_of(tmp_path, "train")})
  newest = [e for e in examples_of(tmp_path, "train") if e["timestamp"] // 86_400 == train_days[-1]]
  assert written["validation"]["validation_examples"] == len(newest)
  assert written["examples_per_sec_train"] > 0
  assert config.ModelConfig.from_dict(written["model_config"]) == model_config
  assert result["auc"] == written["auc"]

  # Independent path: the exported graph's predictions, metrics recomputed.
  loaded = tf.saved_model.load(os.path.join(output_dir, standalone.SAVED_MODEL_DIR))
  serve = loaded.signatures["serving_default"]
  requests = []
  for example in eval_examples:
    request = dict(example)
    request.pop("label")
    requests.append(toy_data.serialize(request))
  probabilities = serve(examples=tf.constant(requests))["probabilities"].numpy()
  labels = np.array([e["label"] for e in eval_examples])
  users = np.array([e["user_id"] for e in eval_examples])
  want = metrics.evaluate(labels, probabilities, users)
  for key in ("auc", "gauc", "logloss", "mean_prediction", "mean_label"):
    assert written[key] == pytest.approx(want[key], abs=1e-5), key


@pytest.mark.e2e
def test_cli_trains_eta_and_writes_metrics_and_model(tmp_path):
  write_split(tmp_path)
  output_dir = tmp_path / "out"
  env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2",
             PYTHONPATH=str(REPO))
  result = subprocess.run(
      [
          sys.executable, "-m", "trainer.train",
          f"--train_files={tmp_path}/train/*.tfrecord.gz",
          f"--eval_files={tmp_path}/eval/*.tfrecord.gz",
          "--model=eta", "--max_seq_len=64", "--train_steps=20", "--batch_size=32",
          "--steps_per_epoch=10", f"--output_dir={output_dir}",
          '--hparams={"top_k": 16, "embedding_dim": 8, "mlp_units": [16]}',
      ],
      capture_output=True, text=True, timeout=600, env=env, cwd=str(REPO),
  )
  assert result.returncode == 0, result.stderr[-4000:]
  assert "step 10/20" in result.stderr and "step 20/20" in result.stderr  # progress
  written = json.loads((output_dir / "metrics.json").read_text())
  assert REQUIRED_KEYS <= set(written)
  assert 0.0 <= written["auc"] <= 1.0 and written["logloss"] > 0
  assert written["model_config"]["top_k"] == 16
  assert (output_dir / "saved_model" / "saved_model.pb").exists()


def test_cli_refuses_unknown_hparams(tmp_path):
  env = dict(os.environ, TF_USE_LEGACY_KERAS="1", PYTHONPATH=str(REPO))
  result = subprocess.run(
      [sys.executable, "-m", "trainer.train", "--train_files=x", "--eval_files=y",
       f"--output_dir={tmp_path}", '--hparams={"topk": 3}'],
      capture_output=True, text=True, timeout=300, env=env, cwd=str(REPO),
  )
  assert result.returncode != 0
  assert "topk" in result.stderr
  assert not (tmp_path / "metrics.json").exists()


def _free_ports(count):
  import socket

  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("localhost", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _start_workers(tmp_path, output_dir, ports, attempt):
  cluster = {"worker": [f"localhost:{port}" for port in ports]}
  workers = []
  for index in range(len(ports)):
    env = dict(
        os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONPATH=str(REPO),
        TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
    )
    log = open(tmp_path / f"worker{index}-{attempt}.log", "w")
    workers.append((subprocess.Popen(
        [
            sys.executable, "-m", "trainer.train",
            f"--train_files={tmp_path}/train/*.tfrecord.gz",
            f"--eval_files={tmp_path}/eval/*.tfrecord.gz",
            "--model=din", "--max_seq_len=64", "--train_steps=60", "--batch_size=32",
            "--steps_per_epoch=5", f"--output_dir={output_dir}",
            '--hparams={"embedding_dim": 8, "mlp_units": [8], "din_hidden_units": [8], '
            '"early_stopping_patience": 100}',
        ],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO),
    ), tmp_path / f"worker{index}-{attempt}.log"))
  return workers


@pytest.mark.e2e
def test_two_workers_train_and_a_killed_run_resumes_from_the_backup(tmp_path):
  """MultiWorkerMirroredStrategy on two loopback ports, killed, restarted."""
  import time

  write_split(tmp_path)
  output_dir = tmp_path / "out"
  ports = _free_ports(2)
  workers = _start_workers(tmp_path, output_dir, ports, attempt=0)
  try:
    deadline = time.time() + 300
    while "step 15/60" not in workers[0][1].read_text():
      assert time.time() < deadline, workers[0][1].read_text()[-3000:]
      assert workers[0][0].poll() is None, workers[0][1].read_text()[-3000:]
      time.sleep(0.5)
    time.sleep(1.0)  # let BackupAndRestore finish the epoch-end save
    workers[1][0].kill()  # preempted worker; the job is restarted as a whole
    workers[0][0].kill()
  finally:
    for process, _ in workers:
      process.wait(timeout=60)
  assert not (output_dir / "metrics.json").exists()

  restarted = _start_workers(tmp_path, output_dir, ports, attempt=1)
  for process, log in restarted:
    assert process.wait(timeout=400) == 0, log.read_text()[-3000:]
  for _, log in restarted:
    assert "resuming from the backup at epoch" in log.read_text()
  written = json.loads((output_dir / "metrics.json").read_text())
  assert written["resumed_from_epoch"] >= 3  # at least 15 of 60 steps were kept
  assert written["train_steps_run"] == 60 - 5 * written["resumed_from_epoch"]
  assert written["train_steps_total"] == 60
  # Early stopping's per-epoch record went on across the restart.
  assert [h["epoch"] for h in written["validation"]["history"]] == list(range(12))
  assert (output_dir / "saved_model" / "saved_model.pb").exists()


# --- early stopping, up-front checks, one run per output_dir ----------------

SMALL_DIN = dict(model="din", max_seq_len=64, embedding_dim=8, mlp_units=(8,),
                 din_hidden_units=(8,), jit_compile=False)


def write_days(tmp_path, days, per_day, name="train"):
  """Toy examples spread over `days` UTC days (example i on day i % days)."""
  examples = toy_data.make_examples(
      toy_data.ToyDataConfig(num_examples=days * per_day, num_users=16, max_history=70, seed=3))
  moved = []
  for i, example in enumerate(examples):
    shift = (i % days) * 86_400
    example = dict(example, timestamp=example["timestamp"] + shift,
                   hist_timestamps=[t + shift for t in example["hist_timestamps"]])
    moved.append(example)
  (tmp_path / name).mkdir()
  toy_data.write_tfrecords(str(tmp_path / name / "part-0.tfrecord.gz"), moved)
  return moved


def test_early_stopping_keeps_the_best_validation_epoch_of_the_newest_train_day(tmp_path):
  examples = write_days(tmp_path, days=4, per_day=96)
  # Train days 0-2 and eval day 3 come from the same log; eval holds the last day.
  (tmp_path / "train" / "part-0.tfrecord.gz").unlink()
  by_day = {}
  for e in examples:
    by_day.setdefault(e["timestamp"] // 86_400, []).append(e)
  days = sorted(by_day)
  train = [e for d in days[:3] for e in by_day[d]]
  toy_data.write_tfrecords(str(tmp_path / "train" / "part-0.tfrecord.gz"), train)
  (tmp_path / "eval").mkdir()
  toy_data.write_tfrecords(str(tmp_path / "eval" / "part-0.tfrecord.gz"), by_day[days[3]])
  output_dir = tmp_path / "out"
  train_config = config.TrainConfig(batch_size=32, train_steps=200, steps_per_epoch=4,
                                    learning_rate=0.05, early_stopping_patience=2)
  standalone.train_and_evaluate(
      str(tmp_path / "train" / "*.gz"), str(tmp_path / "eval" / "*.gz"), str(output_dir),
      config.ModelConfig(**SMALL_DIN), train_config, eval_batch_size=64,
  )
  written = json.loads((output_dir / standalone.METRICS_FILE).read_text())
  validation = written["validation"]
  losses = [h["logloss"] for h in validation["history"]]
  best = int(np.argmin(losses))
  assert validation["best_epoch"] == best and validation["best_value"] == losses[best]
  assert validation["stopped_early"] and len(losses) == best + 1 + 2
  assert written["train_steps_run"] == 4 * len(losses) < 200
  assert validation["best_step"] == 4 * (best + 1)
  assert validation["validation_examples"] == len(by_day[days[2]])
  assert validation["train_examples"] == len(by_day[days[0]]) + len(by_day[days[1]])

  # Independently: the exported model's log loss over the newest TRAIN day's
  # examples is the best recorded value, so the kept weights are the best
  # epoch's and the validation set held exactly that day (not the eval day).
  serve = tf.saved_model.load(str(output_dir / standalone.SAVED_MODEL_DIR)).signatures[
      "serving_default"]
  validation_examples = by_day[days[2]]
  requests = [toy_data.serialize({k: v for k, v in e.items() if k != "label"})
              for e in validation_examples]
  probabilities = serve(examples=tf.constant(requests))["probabilities"].numpy()
  labels = np.array([e["label"] for e in validation_examples])
  assert metrics.log_loss(labels, probabilities) == pytest.approx(validation["best_value"], abs=1e-5)
  eval_labels = np.array([e["label"] for e in by_day[days[3]]])
  assert written["examples"] == eval_labels.size


def test_refit_trains_a_fresh_model_on_every_train_day_for_the_selected_length(tmp_path):
  examples = write_days(tmp_path, days=3, per_day=96)
  (tmp_path / "eval").mkdir()
  toy_data.write_tfrecords(str(tmp_path / "eval" / "part-0.tfrecord.gz"), examples[:64])
  output_dir = tmp_path / "out"
  train_config = config.TrainConfig(batch_size=32, train_steps=40, steps_per_epoch=4,
                                    learning_rate=0.05, early_stopping_patience=1, refit=True)
  written = standalone.train_and_evaluate(
      str(tmp_path / "train" / "*.gz"), str(tmp_path / "eval" / "*.gz"), str(output_dir),
      config.ModelConfig(**SMALL_DIN), train_config, eval_batch_size=64,
  )
  validation = written["validation"]
  total = validation["train_examples"] + validation["validation_examples"]
  assert total == len(examples)
  # The selected length, scaled to every training day's examples.
  assert written["refit_steps"] == -(-validation["best_step"] * total
                                      // validation["train_examples"])
  # The export is the refit model, not the early-stopped one: its log loss
  # over the validation day (which it trained on) is not the recorded one.
  serve = tf.saved_model.load(str(output_dir / standalone.SAVED_MODEL_DIR)).signatures[
      "serving_default"]
  newest = max(e["timestamp"] // 86_400 for e in examples)
  held_out = [e for e in examples if e["timestamp"] // 86_400 == newest]
  requests = [toy_data.serialize({k: v for k, v in e.items() if k != "label"})
              for e in held_out]
  probabilities = serve(examples=tf.constant(requests))["probabilities"].numpy()
  labels = np.array([e["label"] for e in held_out])
  assert metrics.log_loss(labels, probabilities) != pytest.approx(validation["best_value"],
                                                                  abs=1e-4)
  with pytest.raises(config.ConfigError, match="refit needs early stopping"):
    config.TrainConfig(validation_days=0, refit=True)


def test_too_few_days_empty_inputs_and_bad_globs_fail_before_training(tmp_path):
  write_days(tmp_path, days=1, per_day=40)
  write_days(tmp_path, days=1, per_day=64, name="eval")
  (tmp_path / "empty").mkdir()
  toy_data.write_tfrecords(str(tmp_path / "empty" / "part-0.tfrecord.gz"), [])
  model_config = config.ModelConfig(**SMALL_DIN)
  train_config = config.TrainConfig(batch_size=8, train_steps=2, steps_per_epoch=1)
  train, eval_ = str(tmp_path / "train" / "*.gz"), str(tmp_path / "eval" / "*.gz")
  cases = [
      (train, eval_, train_config, "span only 1 day"),
      (train, str(tmp_path / "nothing-*.gz"), train_config, "--eval_files: no files match"),
      (str(tmp_path / "nothing-*.gz"), eval_, train_config, "--train_files: no files match"),
      (str(tmp_path / "empty" / "*.gz"), eval_, train_config.replace(validation_days=0),
       "training files hold no examples"),
      (train, str(tmp_path / "empty" / "*.gz"), train_config, "--eval_files: .* hold no examples"),
  ]
  for index, (train_files, eval_files, settings, message) in enumerate(cases):
    output_dir = tmp_path / f"out{index}"
    with pytest.raises(standalone.training.TrainingError, match=message) as error:
      standalone.train_and_evaluate(train_files, eval_files, str(output_dir), model_config,
                                    settings)
    assert "\n" not in str(error.value)
    assert not (output_dir / standalone.BACKUP_DIR).exists()
    assert not (output_dir / standalone.METRICS_FILE).exists()


def test_another_run_into_the_same_output_dir_is_refused_unless_overwrite(tmp_path):
  write_days(tmp_path, days=2, per_day=40)
  write_days(tmp_path, days=1, per_day=64, name="eval")
  train, eval_ = str(tmp_path / "train" / "*.gz"), str(tmp_path / "eval" / "*.gz")
  output_dir = str(tmp_path / "out")
  model_config = config.ModelConfig(**SMALL_DIN)
  train_config = config.TrainConfig(batch_size=8, train_steps=2, steps_per_epoch=1,
                                    validation_days=0)
  standalone.train_and_evaluate(train, eval_, output_dir, model_config, train_config,
                                export_model=False)
  other = train_config.replace(learning_rate=0.01)
  with pytest.raises(standalone.training.TrainingError, match="differs in learning_rate.*--overwrite"):
    standalone.train_and_evaluate(train, eval_, output_dir, model_config, other,
                                  export_model=False)
  result = standalone.train_and_evaluate(train, eval_, output_dir, model_config, other,
                                         export_model=False, overwrite=True)
  written = json.loads((tmp_path / "out" / standalone.METRICS_FILE).read_text())
  assert written["train_config"]["learning_rate"] == 0.01 == result["train_config"]["learning_rate"]


def test_cli_reports_a_glob_matching_nothing_in_one_line(tmp_path):
  write_split(tmp_path)
  env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))
  result = subprocess.run(
      [sys.executable, "-m", "trainer.train", f"--train_files={tmp_path}/train/*.gz",
       f"--eval_files={tmp_path}/evl/*.gz", f"--output_dir={tmp_path}/out",
       "--model=din", "--max_seq_len=64"],
      capture_output=True, text=True, timeout=300, env=env, cwd=str(REPO),
  )
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith("error: --eval_files: no files match")
  assert not (tmp_path / "out" / "backup").exists()
