"""The benchmark scripts' bookkeeping: the MFU arithmetic and dis_vs_trm's reuse of finished
runs (the scripts themselves run for minutes: not here; the peak table is trm_jax.flops', tested
in test_flops.py)."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_trm  # noqa: E402


def test_flop_rates():
  rates = bench_trm.flop_rates(model_flops=6e12, seconds=0.02, peak=1000.0)
  assert rates == pytest.approx({"model_tflop_per_call": 6.0, "tflops_per_s": 300.0,
                                 "peak_tflops": 1000.0, "mfu": 0.3})
  assert bench_trm.flop_rates(1e12, 2.0, None)["mfu"] is None


def test_dis_vs_trm_reuses_a_finished_run_only_with_its_settings(tmp_path):
  import json
  import dis_vs_trm
  settings = ["--epochs", "300", "--dis_n_sup", "6"]
  (tmp_path / "eval_table.txt").write_text("done\n")
  (tmp_path / "benchmark_timing.json").write_text(json.dumps({"seconds": 12.5,
                                                              "settings": settings}))
  (tmp_path / "metrics.jsonl").write_text(
      json.dumps({"kind": "train", "forward_passes_per_example": 18.0, "count": 10}) + "\n")
  assert dis_vs_trm.train("sudoku6", "dis", tmp_path, settings) == {
      "train_seconds": 12.5, "train_passes_per_example": 18.0}
  with pytest.raises(SystemExit, match="trained with --epochs 300 --dis_n_sup 6, not --epochs "
                                       "300 --dis_n_sup 4"):
    dis_vs_trm.train("sudoku6", "dis", tmp_path, ["--epochs", "300", "--dis_n_sup", "4"])
  (tmp_path / "benchmark_timing.json").write_text(json.dumps({"seconds": 12.5}))
  with pytest.raises(SystemExit, match="settings that were not recorded"):
    dis_vs_trm.train("sudoku6", "dis", tmp_path, settings)


def test_step_anatomy_splits_matmul_flops_by_dtype():
  """A bf16 dot asked for an fp32 output has fp32 x bf16 dots in its backward (the cotangent is
  fp32): what step_anatomy.py reports for the training step."""
  import jax
  import jax.numpy as jnp
  import step_anatomy
  x = jnp.ones((8, 16), jnp.bfloat16)
  w = jnp.ones((16, 4), jnp.bfloat16)
  loss = lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32).sum()
  flops = 2 * 8 * 16 * 4
  assert step_anatomy.dot_flops_by_dtype(jax.grad(loss, argnums=(0, 1)), x, w) == {
      "bfloat16 x bfloat16 -> float32": flops, "float32 x bfloat16 -> float32": 2 * flops}
