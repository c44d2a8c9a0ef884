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
