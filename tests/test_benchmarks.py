"""The benchmark scripts' MFU arithmetic (the scripts themselves run for minutes: not here)."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_trm  # noqa: E402


@pytest.mark.parametrize("kind, dtype, override, expected", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", None, 989.4),
    ("NVIDIA H100 PCIe", "bfloat16", None, 756.0),  # the PCIe card is matched before "H100"
    ("NVIDIA H200", "float16", None, 989.4),
    ("TPU v5 lite", "bfloat16", None, 197.0),
    ("TPU v5p", "bfloat16", None, 459.0),
    ("NVIDIA H100 80GB HBM3", "float32", None, None),  # no fp32 matrix peak in the table
    ("cpu", "bfloat16", None, None),
    ("cpu", "bfloat16", 3.5, 3.5),
])
def test_peak_tflops(kind, dtype, override, expected):
  assert bench_trm.peak_tflops(kind, dtype, override) == expected


def test_flop_rates():
  rates = bench_trm.flop_rates(model_flops=6e12, seconds=0.02, peak=1000.0)
  assert rates == pytest.approx({"model_tflop_per_call": 6.0, "tflops_per_s": 300.0,
                                 "peak_tflops": 1000.0, "mfu": 0.3})
  assert bench_trm.flop_rates(1e12, 2.0, None)["mfu"] is None
