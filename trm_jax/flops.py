"""Model FLOP utilisation: matmul FLOPs of a JAX function, read off its jaxpr (the numerator),
and the device's matrix peak (the denominator).

    flops = matmul_flops(fn, *args)      # args may be arrays or jax.ShapeDtypeStruct
    flops = model_flops(spec, train.train_step, state, batch, ...)  # XLA dot, no remat
    peak = peak_tflops(jax.devices()[0].device_kind, spec.compute_dtype)  # None: unknown

Every `dot_general` counts 2 * (product of the lhs shape) * (product of the rhs free dims),
i.e. one multiply and one add per multiply-accumulate. Loops multiply their body by the trip
count (`scan`, and `fori_loop`, which JAX lowers to `scan` when its bounds are static);
`cond` counts its most expensive branch; calls, custom derivatives and remat blocks count
their body once. Element-wise work, reductions and gathers are not counted: for TRM they are
a few percent of the matmul FLOPs, and MFU conventionally counts matmuls only.

Counting is on the traced program, before XLA: nothing is compiled or run. The result is the
*model* FLOPs of a step when the program is traced without rematerialisation and with XLA's
own dot and attention (`model_flops`: remat "none", execution settings "xla"): a custom call
(the CPU kernels, a fused attention) holds no `dot_general` for this counter to see, and remat
adds recomputation that MFU does not credit.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import jax
from jax.extend import core as jax_core

from trm_jax.kernels import execution


def matmul_flops(fn: Callable[..., Any], *args, **kwargs) -> int:
  """Matmul FLOPs of one call `fn(*args, **kwargs)` (abstract arguments are enough)."""
  return jaxpr_matmul_flops(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)


def model_flops(spec, fn: Callable[..., Any], *args, **kwargs) -> int:
  """Matmul FLOPs of `fn(*args, spec=..., **kwargs)` traced with XLA's dot and attention and no
  remat, whatever `spec` (a ModelSpec) asks for: the model's own FLOPs, which MFU credits."""
  plain = dataclasses.replace(spec, remat="none")
  with execution.using(execution.Settings(matmul="xla", attention="xla")):
    return matmul_flops(functools.partial(fn, spec=plain, **kwargs), *args)


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator's figures: what MFU divides by and what a roofline estimate uses."""
  name: str
  hbm_bytes: int  # memory per device (chip; for TPU v4/v5p one chip is one JAX device)
  bf16_tflops: float  # dense bf16/fp16 matrix peak, TFLOP/s per device
  hbm_tb_per_s: float  # memory bandwidth, TB/s (1e12 bytes/s) per device
  source: str


_GiB, _GB = 2**30, 10**9
# Matched as substrings of `device.device_kind` (a TPU v5e reports "TPU v5 lite", a v6e
# "TPU v6 lite"), first match wins. Vendors' spec pages, as read on 2026-12-06.
CHIPS = (
    Chip("H100 PCIe", 80 * _GB, 756.0, 2.0, "nvidia.com/en-us/data-center/h100 (PCIe column)"),
    Chip("H100", 80 * _GB, 989.4, 3.35, "nvidia.com/en-us/data-center/h100 (SXM column)"),
    Chip("H200", 141 * _GB, 989.4, 4.8, "nvidia.com/en-us/data-center/h200 (SXM column)"),
    Chip("A100", 80 * _GB, 312.0, 2.039, "nvidia.com/en-us/data-center/a100 (80GB SXM)"),
    Chip("L4", 24 * _GB, 121.0, 0.3, "nvidia.com/en-us/data-center/l4"),
    Chip("TPU v4", 32 * _GiB, 275.0, 1.2, "cloud.google.com/tpu/docs/v4"),
    Chip("TPU v5 lite", 16 * _GiB, 197.0, 0.819, "cloud.google.com/tpu/docs/v5e"),
    Chip("TPU v5e", 16 * _GiB, 197.0, 0.819, "cloud.google.com/tpu/docs/v5e"),
    Chip("TPU v5", 95 * _GiB, 459.0, 2.765, "cloud.google.com/tpu/docs/v5p"),
    Chip("TPU v6 lite", 32 * _GiB, 918.0, 1.64, "cloud.google.com/tpu/docs/v6e"),
    Chip("TPU v6e", 32 * _GiB, 918.0, 1.64, "cloud.google.com/tpu/docs/v6e"),
)


def chip(device_kind: str) -> Chip | None:
  """The table's entry for a device kind (None for kinds it lacks, e.g. CPUs)."""
  return next((c for c in CHIPS if c.name in device_kind), None)


def peak_tflops(device_kind: str, compute_dtype: str, override: float | None = None
                ) -> float | None:
  """The matrix peak that MFU divides by: `override`, else the table for bf16/fp16 compute
  (None for other dtypes, and for devices not in the table, e.g. CPUs)."""
  if override:
    return override
  if compute_dtype not in ("bfloat16", "float16"):
    return None
  entry = chip(device_kind)
  return entry.bf16_tflops if entry else None


def jaxpr_matmul_flops(jaxpr: jax_core.Jaxpr) -> int:
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      total += _dot_general_flops(eqn)
    elif name == "while":
      if any(_sub_flops(eqn.params[k]) for k in ("body_jaxpr", "cond_jaxpr")):
        raise ValueError("a while_loop with matmuls has no static trip count to count them "
                         "by; use lax.scan or fori_loop with static bounds")
    elif name == "cond":
      total += max(_sub_flops(branch) for branch in eqn.params["branches"])
    else:
      body = sum(_sub_flops(value) for value in eqn.params.values())
      total += body * (eqn.params["length"] if name == "scan" else 1)
  return total


def _sub_flops(value) -> int:
  if isinstance(value, jax_core.ClosedJaxpr):
    return jaxpr_matmul_flops(value.jaxpr)
  if isinstance(value, jax_core.Jaxpr):
    return jaxpr_matmul_flops(value)
  if isinstance(value, (tuple, list)):
    return sum(_sub_flops(v) for v in value)
  return 0


def _dot_general_flops(eqn) -> int:
  lhs, rhs = (v.aval.shape for v in eqn.invars)
  (_, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
  rhs_free = [d for i, d in enumerate(rhs) if i not in rhs_contract and i not in rhs_batch]
  return 2 * math.prod(lhs) * math.prod(rhs_free)
