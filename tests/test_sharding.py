"""Sharded training on 8 simulated CPU devices matches one device."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from trm_jax import sharding

HERE = pathlib.Path(__file__).resolve().parent


def _run(mesh: str, out: pathlib.Path):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=8")
  result = subprocess.run([sys.executable, str(HERE / "sharded_steps.py"), mesh, str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return np.load(out)


def test_meshes_match_a_single_device(tmp_path):
  reference = _run("1x1", tmp_path / "single.npz")
  for mesh in ("8x1", "4x2", "1x8"):
    out = _run(mesh, tmp_path / f"{mesh}.npz")
    np.testing.assert_allclose(out["losses"], reference["losses"], rtol=2e-5, err_msg=mesh)
    for key in reference.files:
      if key not in ("losses", "table_spec"):
        np.testing.assert_allclose(out[key], reference[key], rtol=1e-4, atol=2e-6,
                                   err_msg=f"{mesh}: {key}")
    assert "data" in str(out["table_spec"]) and "fsdp" in str(out["table_spec"])


def test_mesh_shape_inference_and_errors():
  import jax
  n = len(jax.devices())
  assert sharding.make_mesh((-1, 1)).shape == {"data": n, "fsdp": 1}
  with pytest.raises(ValueError, match="needs"):
    sharding.make_mesh((n + 1, 1))
  with pytest.raises(ValueError, match="at most one -1"):
    sharding.make_mesh((-1, -1))


# ------------------------------------------------------------------------ sharded evaluation --


@pytest.fixture(scope="module")
def arc_run(tmp_path_factory):
  """A tiny ARC run (one training step) on the fixture tasks: its test split has several
  augmentations per task, so pass@K votes over many rows."""
  from trm_jax import main
  from tests.test_main import tiny_arc_config
  cfg = tiny_arc_config()
  cfg.train.max_steps = 1
  cfg.eval.max_batches = 1  # the run's own evaluation; the tests below evaluate everything
  workdir = tmp_path_factory.mktemp("arc")
  main.run(cfg, str(workdir))
  return workdir


def _evaluate(run, mesh, out, devices=1, coordinator=None):
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  command = [sys.executable, str(HERE / "sharded_eval.py"), str(run), mesh, str(out)]
  if coordinator is None:
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
  else:  # two processes; logs to files (a full pipe would block one while the other waits)
    logs = [open(f"{out}.log{i}", "w") for i in range(2)]
    procs = [subprocess.Popen(command + ["--coordinator", coordinator, "--process_id", str(i)],
                              env=env, stdout=logs[i], stderr=subprocess.STDOUT)
             for i in range(2)]
    for i, proc in enumerate(procs):
      proc.wait(timeout=600)
      logs[i].close()
      assert proc.returncode == 0, pathlib.Path(f"{out}.log{i}").read_text()[-3000:]
  import json
  saved = json.loads(out.read_text())
  rows = {}
  for path in sorted(out.parent.glob(f"{out.name}.rows*")):
    rows.update(json.loads(path.read_text()))
  return saved, rows, saved["records"]


def test_evaluation_is_data_parallel_and_equals_one_device(arc_run, tmp_path):
  """On 8 devices (one process) and on 2 processes, each device computes 1/N of the rows, and
  the per-step accuracies, forward passes, pass@K and the ARC vote itself (every candidate's
  votes and confidence, the submission) equal one device's."""
  reference, rows, records = _evaluate(arc_run, "1x1", tmp_path / "one.json")
  assert records > 16 and records % 16  # several batches, the last one padded
  padded = -(-records // 16) * 16
  assert list(rows.values()) == [padded]
  assert "pass@2" in reference["result"] and reference["result"]["count"] == records
  votes = [votes for candidates in reference["candidates"].values() for votes, _ in candidates]
  assert sum(votes) == records  # every prediction voted once
  port = 20000 + (os.getpid() + 7) % 20000
  for mesh, devices, coordinator, name in (("8x1", 8, None, "eight"),
                                           ("2x1", 1, f"127.0.0.1:{port}", "two_processes")):
    result, rows, _ = _evaluate(arc_run, mesh, tmp_path / f"{name}.json", devices, coordinator)
    assert len(rows) == int(mesh.split("x")[0]), (name, rows)
    assert set(rows.values()) == {padded // len(rows)}, (name, rows)  # 1/N of every batch
    assert result == reference, name
