"""The one matmul every linear layer uses: `x @ w` with fp32 accumulation, in x's dtype.

`impl` (model config field `matmul`):
  "xla"  - XLA's dot, asked for an fp32 result and rounded back (on CPU this reaches XLA's
           YNNPACK bf16 kernels, twice as fast as a bf16-output dot; identical numerics).
  "amx"  - the AMX GEMM of amx_matmul.cc on CPU (the forward and both backward GEMMs), XLA's
           dot on any other platform; an error if the kernel is unavailable.
  "auto" - "amx" for bf16 when the kernel is available on this machine, else "xla".
The kernel is a detail of a single-device CPU run. When JAX's default backend is a GPU or TPU
(whose hosts often have AMX CPUs) or the process sees more than one device (a multi-device CPU
mesh: the custom call is not partitioned, XLA would gather its operands), both "auto" and "amx"
take XLA's dot, and the kernel is never built, loaded or called.
`swiglu` is the same choice for the SwiGLU layer's fused gate/up projection and activation.
Both round the fp32 accumulator to the output dtype once (round to nearest even), as PyTorch's
bf16 matmul does; they differ only in the summation order inside the accumulator.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from trm_jax.config import MATMUL_IMPLS as IMPLS
from trm_jax.kernels import amx


def xla_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  return jnp.dot(x, w, preferred_element_type=jnp.float32).astype(x.dtype)


@jax.custom_vjp
def _amx_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  return _amx_fwd(x, w)[0]


def _amx_fwd(x, w):
  x2 = x.reshape(-1, x.shape[-1])
  y = amx.gemm(x2, w).reshape(*x.shape[:-1], w.shape[-1])
  return y, (x2, w)


def _linear_grads(x2, w, g2, batch_shape):
  """(dx, dw) of y = x @ w from the cotangent g2 [M, N] of y, x2 = x as [M, K]."""
  dx = amx.gemm(g2, w, trans_b=True).reshape(*batch_shape, w.shape[0])
  return dx, amx.gemm(x2, g2, trans_a=True)


def _amx_bwd(res, g):
  x2, w = res
  return _linear_grads(x2, w, g.reshape(-1, g.shape[-1]), g.shape[:-1])


_amx_matmul.defvjp(_amx_fwd, _amx_bwd)


def xla_swiglu(x: jax.Array, w: jax.Array) -> jax.Array:
  gate, up = jnp.split(xla_matmul(x, w), 2, axis=-1)
  return jax.nn.silu(gate) * up


@jax.custom_vjp
def _amx_swiglu(x: jax.Array, w: jax.Array) -> jax.Array:
  x2 = x.reshape(-1, x.shape[-1])
  return amx.swiglu(x2, w, with_gu=False).reshape(*x.shape[:-1], w.shape[-1] // 2)


def _amx_swiglu_fwd(x, w):
  x2 = x.reshape(-1, x.shape[-1])
  h, gu = amx.swiglu(x2, w, with_gu=True)
  return h.reshape(*x.shape[:-1], w.shape[-1] // 2), (x2, w, gu)


def _amx_swiglu_bwd(res, dh):
  x2, w, gu = res
  dgu = amx.swiglu_bwd(dh.reshape(-1, dh.shape[-1]), gu)
  return _linear_grads(x2, w, dgu, dh.shape[:-1])


_amx_swiglu.defvjp(_amx_swiglu_fwd, _amx_swiglu_bwd)


def single_cpu_device() -> bool:
  """True when JAX runs on the CPU backend with one device: the only place for the kernel."""
  return jax.default_backend() == "cpu" and jax.device_count() == 1


def uses_amx(impl: str, dtype) -> bool:
  """Whether `matmul(..., impl)` runs the AMX kernel for operands of `dtype` (decided at trace
  time; the model config's `matmul` is part of the jit key)."""
  if impl not in IMPLS:
    raise ValueError(f"matmul implementation {impl!r}; choose one of {IMPLS}")
  if impl == "xla" or jnp.dtype(dtype) != jnp.bfloat16 or not single_cpu_device():
    return False
  if impl == "amx" and not amx.available():
    raise RuntimeError(f"matmul='amx' but the AMX kernel is unavailable: {amx.unavailable_reason()}")
  return amx.available()


def matmul(x: jax.Array, w: jax.Array, impl: str = "auto") -> jax.Array:
  """x [..., K] @ w [K, N] -> [..., N] in x.dtype (w must already be in x.dtype)."""
  if not uses_amx(impl, x.dtype):
    return xla_matmul(x, w)
  return jax.lax.platform_dependent(x, w, cpu=_amx_matmul, default=xla_matmul)


def swiglu(x: jax.Array, w: jax.Array, impl: str = "auto") -> jax.Array:
  """silu(x @ w_gate) * (x @ w_up) for w = [w_gate | w_up] [K, 2I] (w in x.dtype).

  The AMX path fuses the activation into the GEMM (no [.., 2I] round trip through memory in the
  forward) and the activation's backward into one pass; it needs I % 16 == 0 (every official
  width is a multiple of 256).
  """
  if not uses_amx(impl, x.dtype) or (w.shape[-1] // 2) % 16:
    return xla_swiglu(x, w)
  return jax.lax.platform_dependent(x, w, cpu=_amx_swiglu, default=xla_swiglu)
