"""Checkpoints: exact resume after SIGKILL, clean exit on SIGTERM, fallback from a bad checkpoint;
what a resume may change in the config; metrics.jsonl and console output across resumes and
processes.

Each test runs the real CLI in a subprocess on a generated 4x4 Sudoku (12 train steps).
"""

import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time
import warnings

import jax
import numpy as np
import pytest
from orbax.checkpoint import v1 as ocp

import processes

REPO = pathlib.Path(__file__).resolve().parents[1]
OVERRIDES = [
    "--config.data.generate.size=4", "--config.data.builder_config.size=4",
    "--config.data.builder_config.name=generated_4x4", "--config.data.generate.num_train=71",
    "--config.data.generate.num_test=16", "--config.train.epochs=6",
    "--config.train.eval_interval=3", "--config.train.checkpoint_every_steps=2",
    "--config.train.log_every_steps=1", "--config.train.keep_checkpoints=20",
]


def _command(workdir, variant="smoke"):
  return [sys.executable, "-m", "trm_jax.main", "--config",
          f"experiments/sudoku.py:{variant},runlocal", "--workdir", str(workdir), *OVERRIDES]


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  return env


def _run(workdir, variant="smoke"):
  return subprocess.run(_command(workdir, variant), cwd=REPO, env=_env(), capture_output=True, text=True,
                        timeout=600)


def _steps(workdir):
  root = pathlib.Path(workdir) / "checkpoints"
  return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit()) if root.exists() else []


def _start_and_signal(workdir, sig, after_step, variant="smoke"):
  process = subprocess.Popen(_command(workdir, variant), cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 300
  while time.time() < deadline and not any(s >= after_step for s in _steps(workdir)):
    if process.poll() is not None:
      pytest.fail(f"run ended before step {after_step}:\n{process.stdout.read()[-3000:]}")
    time.sleep(0.05)
  process.send_signal(sig)
  out, _ = process.communicate(timeout=300)
  return process.returncode, out


def _records(workdir, kind):
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [r for r in map(json.loads, lines) if r["kind"] == kind]


# Throughput differs between runs; everything else a train record holds is the training's.
TIMING_FIELDS = {"steps_per_s", "examples_per_s", "supervision_steps_per_s",
                 "forward_passes_per_s", "seconds"}


def _assert_same_records(workdir, reference):
  """One record per step and kind, equal (timing aside) to the uninterrupted run's."""
  for kind in ("train", "eval"):
    got, want = _records(workdir, kind), _records(reference, kind)
    assert [r["step"] for r in got] == [r["step"] for r in want], kind
    for a, b in zip(got, want):
      assert {k: v for k, v in a.items() if k not in TIMING_FIELDS} == (
          {k: v for k, v in b.items() if k not in TIMING_FIELDS}), (kind, a["step"])


def _final_state(workdir):
  """The newest checkpoint's train state, loaded onto this process's one device."""
  step = max(_steps(workdir))
  path = pathlib.Path(workdir) / "checkpoints" / str(step)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  metadata = ocp.checkpointables_metadata(path).metadata["state"]
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          metadata)
  return step, ocp.load_checkpointables(path, {"state": abstract})["state"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  result = _run(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


@pytest.fixture(scope="module")
def uninterrupted_dis(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted_dis")
  result = _run(workdir, "dis_smoke")
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def test_sigkill_then_resume_is_bitwise_identical(tmp_path, uninterrupted):
  _sigkill_resume_matches(tmp_path, uninterrupted, "smoke")


def test_dis_sigkill_then_resume_is_bitwise_identical(tmp_path, uninterrupted_dis):
  """DIS's carry (previous predictions, drawn target paths) resumes exactly too."""
  _sigkill_resume_matches(tmp_path, uninterrupted_dis, "dis_smoke")


def _sigkill_resume_matches(tmp_path, uninterrupted, variant):
  code, out = _start_and_signal(tmp_path, signal.SIGKILL, after_step=4, variant=variant)
  assert code == -signal.SIGKILL
  killed_at = max(_steps(tmp_path))
  assert killed_at < 12
  resumed = _run(tmp_path, variant)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from checkpoint step" in resumed.stdout
  # Libraries' INFO logs (Orbax's checkpoint manager above all) are off by default.
  assert not re.search(r"^I\d{4} ", resumed.stderr, re.M), resumed.stderr[-3000:]
  step_a, state_a = _final_state(uninterrupted)
  step_b, state_b = _final_state(tmp_path)
  assert step_a == step_b == 12
  jax.tree.map(np.testing.assert_array_equal, state_a, state_b)
  _assert_same_records(tmp_path, uninterrupted)


def test_metrics_after_a_resume_hold_each_step_once(tmp_path, uninterrupted):
  """A crash after step 12's records but with step 6 the newest checkpoint (made so by
  deleting the later ones): the resumed run retrains 7..12 and must not log them twice."""
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted, workdir)
  for step in _steps(workdir):
    if step > 6:
      shutil.rmtree(workdir / "checkpoints" / str(step))
  result = _run(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resumed from checkpoint step 6" in result.stdout
  _assert_same_records(workdir, uninterrupted)


def test_resume_with_a_changed_config_is_refused_naming_the_fields(tmp_path, uninterrupted):
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted, workdir)
  config_before = (workdir / "config.json").read_text()
  old = json.loads(config_before)
  result = subprocess.run(_command(workdir) + ["--config.train.lr=0.5",
                                               "--config.model.L_cycles=1"],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode != 0
  assert f"train.lr: {old['train']['lr']!r} -> 0.5" in result.stderr, result.stderr[-3000:]
  assert f"model.L_cycles: {old['model']['L_cycles']} -> 1" in result.stderr
  assert "--allow_config_change" in result.stderr and "Traceback" not in result.stderr
  assert "compiled in" not in result.stdout  # refused before building anything
  assert (workdir / "config.json").read_text() == config_before
  assert not (workdir / "config_changes.jsonl").exists()


def test_resume_with_a_changed_config_and_the_flag_is_recorded(tmp_path, uninterrupted):
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted, workdir)
  old_lr = json.loads((workdir / "config.json").read_text())["train"]["lr"]
  result = subprocess.run(_command(workdir) + ["--config.train.lr=0.5", "--allow_config_change"],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "config changed at step 12: train.lr" in result.stdout
  records = [json.loads(l) for l in (workdir / "config_changes.jsonl").read_text().splitlines()]
  assert len(records) == 1 and records[0]["step"] == 12
  assert records[0]["changes"] == {"train.lr": [old_lr, 0.5]}
  assert json.loads((workdir / "config.json").read_text())["train"]["lr"] == 0.5


def test_a_run_saved_before_issue_29_resumes_on_other_kernels(tmp_path, uninterrupted):
  """A config.json whose model config holds matmul and attention (as every run saved before
  the kernels became execution settings): the same run for the resume, and a changed
  execution.matmul is free, recorded as a change of execution settings."""
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted, workdir)
  saved = json.loads((workdir / "config.json").read_text())
  saved["model"].update(saved.pop("execution"))
  assert saved["model"]["matmul"] == "auto"
  (workdir / "config.json").write_text(json.dumps(saved))
  result = subprocess.run(_command(workdir) + ["--config.execution.matmul=xla"], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resumed from checkpoint step 12" in result.stdout
  records = [json.loads(l) for l in (workdir / "config_changes.jsonl").read_text().splitlines()]
  assert [r["changes"] for r in records] == [{"execution.matmul": ["auto", "xla"]}]
  config = json.loads((workdir / "config.json").read_text())
  assert "matmul" not in config["model"] and config["execution"]["matmul"] == "xla"


def test_eval_only_on_the_run_itself_with_other_eval_settings(tmp_path, uninterrupted):
  """Evaluation settings are not the run's config: --eval_only neither refuses nor records."""
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted, workdir)
  config_before = (workdir / "config.json").read_text()
  result = subprocess.run(_command(workdir) + ["--eval_only", "--config.eval.global_batch_size=8"],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "evaluated checkpoint step 12" in result.stdout
  assert (workdir / "config.json").read_text() == config_before
  assert not (workdir / "config_changes.jsonl").exists()


def test_sigterm_saves_a_complete_checkpoint_and_exits_cleanly(tmp_path):
  code, out = _start_and_signal(tmp_path, signal.SIGTERM, after_step=2)
  assert code == 0, out[-3000:]
  assert "SIGTERM: saved a complete checkpoint at step" in out
  step = int(re.search(r"SIGTERM: saved a complete checkpoint at step (\d+);", out).group(1))
  assert step in _steps(tmp_path)
  with warnings.catch_warnings():  # No target shardings given: this only checks it all loads.
    warnings.filterwarnings("ignore", "Sharding info not provided", UserWarning)
    ocp.load_checkpointables(tmp_path / "checkpoints" / str(step))  # complete and loadable


def test_corrupted_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, uninterrupted):
  workdir = tmp_path / "run"
  shutil.copytree(uninterrupted, workdir)
  steps = _steps(workdir)
  latest = workdir / "checkpoints" / str(steps[-1])
  for f in (latest / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 0 and "manifest" not in f.name:
      f.write_bytes(b"\0" * 7)  # truncate the array data
  result = _run(workdir)
  assert result.returncode == 0, result.stderr[-3000:]
  # A warning (stderr, every process), then the resume line.
  assert f"checkpoint step {steps[-1]}" in result.stderr and "falling back" in result.stderr
  assert f"resumed from checkpoint step {steps[-2]}" in result.stdout


def test_resume_onto_a_different_mesh(tmp_path, uninterrupted):
  env = dict(_env(), XLA_FLAGS="--xla_force_host_platform_device_count=8")
  first = _command(tmp_path) + ["--config.mesh_shape=(2,4)", "--config.train.epochs=2",
                                "--config.train.eval_interval=2"]
  # epochs=2 stops after step 4; then the full run continues on another mesh.
  result = subprocess.run(first, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert max(_steps(tmp_path)) == 4
  # The first run's epochs and eval_interval differ: a config change, allowed and recorded.
  second = _command(tmp_path) + ["--config.mesh_shape=(8,1)", "--allow_config_change"]
  result = subprocess.run(second, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resumed from checkpoint step 4" in result.stdout
  change, = [json.loads(l) for l in (tmp_path / "config_changes.jsonl").read_text().splitlines()]
  assert change["step"] == 4
  assert change["changes"] == {"mesh_shape": [[2, 4], [8, 1]], "train.epochs": [2, 6],
                               "train.eval_interval": [2, 3]}
  _, reference = _final_state(uninterrupted)
  _, resumed = _final_state(tmp_path)
  # Sharded reductions add in another order: equal to float tolerance, not bitwise.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4),
               reference["trainable"], resumed["trainable"])


def test_eval_only_evaluates_the_newest_checkpoint(tmp_path, uninterrupted):
  result = subprocess.run(_command(tmp_path) + ["--eval_only",
                                                f"--checkpoint_dir={uninterrupted / 'checkpoints'}"],
                          cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "evaluated checkpoint step 12" in result.stdout and "exact_accuracy:" in result.stdout
  assert not (tmp_path / "checkpoints").exists() or not _steps(tmp_path)


def assert_trains_like_one_process(workdir, uninterrupted):
  """One record per step in metrics.jsonl, and the final weights of the one-process run: the
  same examples in each global batch, rows in another order, so equal up to float reordering."""
  assert [r["step"] for r in _records(workdir, "train")] == list(range(1, 13))
  _, reference = _final_state(uninterrupted)
  _, together = _final_state(workdir)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4),
               reference["trainable"], together["trainable"])


def test_two_processes_train_together_like_one(tmp_path, uninterrupted):
  port = processes.free_port()
  codes, output, _ = processes.run_together(
      [_command(tmp_path / "run") + processes.coordinator_flags(port, i) for i in range(2)],
      [tmp_path / f"process{i}.log" for i in range(2)], [_env()] * 2, REPO, timeout=600)
  assert codes == [0, 0], output[0][-3000:] + output[1][-3000:]
  # Process 0 reports and writes; process 1 prints no status and writes no metrics.
  for line in ("workdir:", "validation exact_accuracy", "saving checkpoint", "exact_accuracy:"):
    assert line in output[0] and line not in output[1], line
  assert_trains_like_one_process(tmp_path / "run", uninterrupted)


def test_manager_saves_on_the_interval_and_when_forced(tmp_path):
  from trm_jax import checkpoint as checkpoint_lib
  manager = checkpoint_lib.CheckpointManager(tmp_path / "ckpt", save_interval_steps=3, keep=10)
  state = {"w": np.arange(4.0, dtype=np.float32)}
  saved = [step for step in range(1, 8) if manager.maybe_save(step, state, {"position": step})]
  assert manager.maybe_save(8, state, {"position": 8}, force=True)
  manager.wait()
  assert saved == [3, 6]
  assert manager.steps() == [3, 6, 8]
  step, restored, loop = manager.restore_latest(state, {"position": 0})
  assert step == 8 and loop == {"position": 8}
  np.testing.assert_array_equal(restored["w"], state["w"])
  manager.close()
