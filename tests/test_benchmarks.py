"""The benchmark scripts' MFU arithmetic (the scripts themselves run for minutes: not here;
the peak table is trm_jax.flops', tested in test_flops.py)."""

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
