"""Checkpoints: exact resume after SIGKILL, clean exit on SIGTERM, fallback from a bad checkpoint.

Each test runs the real CLI in a subprocess on a generated 4x4 Sudoku (12 train steps).
"""

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

REPO = pathlib.Path(__file__).resolve().parents[1]
OVERRIDES = [
    "--config.data.generate.size=4", "--config.data.builder_config.size=4",
    "--config.data.builder_config.name=generated_4x4", "--config.data.generate.num_train=64",
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
  step_a, state_a = _final_state(uninterrupted)
  step_b, state_b = _final_state(tmp_path)
  assert step_a == step_b == 12
  jax.tree.map(np.testing.assert_array_equal, state_a, state_b)


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
  assert f"checkpoint step {steps[-1]}" in result.stdout and "falling back" in result.stdout
  assert f"resumed from checkpoint step {steps[-2]}" in result.stdout


def test_resume_onto_a_different_mesh(tmp_path, uninterrupted):
  env = dict(_env(), XLA_FLAGS="--xla_force_host_platform_device_count=8")
  first = _command(tmp_path) + ["--config.mesh_shape=(2,4)", "--config.train.epochs=2",
                                "--config.train.eval_interval=2"]
  # epochs=2 stops after step 4; then the full run continues on another mesh.
  result = subprocess.run(first, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert max(_steps(tmp_path)) == 4
  second = _command(tmp_path) + ["--config.mesh_shape=(8,1)"]
  result = subprocess.run(second, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "resumed from checkpoint step 4" in result.stdout
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


def test_two_processes_train_together_like_one(tmp_path, uninterrupted):
  port = 20000 + os.getpid() % 20000
  # Logs go to files: a full pipe would block one process while the other waits for it.
  logs = [open(tmp_path / f"process{i}.log", "w") for i in range(2)]
  procs = [subprocess.Popen(
      _command(tmp_path / "run") + [f"--coordinator_address=127.0.0.1:{port}",
                                    "--num_processes=2", f"--process_id={i}"],
      cwd=REPO, env=_env(), stdout=logs[i], stderr=subprocess.STDOUT) for i in range(2)]
  for i, p in enumerate(procs):
    p.wait(timeout=600)
    logs[i].close()
    assert p.returncode == 0, (tmp_path / f"process{i}.log").read_text()[-3000:]
  _, reference = _final_state(uninterrupted)
  _, together = _final_state(tmp_path / "run")
  # Same examples per global batch, rows in another order: equal up to float reordering.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4),
               reference["trainable"], together["trainable"])


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
