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
            '--hparams={"embedding_dim": 8, "mlp_units": [8], "din_hidden_units": [8]}',
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
  assert (output_dir / "saved_model" / "saved_model.pb").exists()
