"""The one matmul every linear layer uses: `x @ w` with fp32 accumulation, in x's dtype.

`impl` (IMPLS; the execution setting `matmul`: kernels/execution.py):
  "xla"    - XLA's dot, asked for an fp32 result and rounded back (on CPU this reaches XLA's
             YNNPACK bf16 kernels, twice as fast as a bf16-output dot; identical numerics).
  "xla_native" - XLA's dot with its result in the operands' dtype (cuBLAS accumulates a bf16
             GEMM in fp32 and rounds once in its epilogue: the same numerics without an fp32
             output written to memory). The GPU candidate against "xla" (BUILD_NOTES, "GPU"),
             not a default anywhere until measured.
  "amx"    - the AMX GEMM of cpu_gemm.cc on CPU (the forward and both backward GEMMs), XLA's
             dot on any other platform; an error if the kernel is unavailable.
  "avx512" - the same GEMM built for AVX512-BF16 (AMD Zen 4/5, and any AMX CPU); same rules.
  "auto"   - for bf16, the best kernel that works on this machine (amx, else avx512), else
             "xla".
The kernels are a detail of a single-device CPU run. When the program is traced for a GPU or TPU
(whose hosts often have AMX CPUs; `target.current()`, set by the step builders from the mesh, so
a TPU program compiled on a CPU host is a TPU program) or for more than one device (a
multi-device CPU mesh: the custom call is not partitioned, XLA would gather its operands), every
choice takes XLA's dot, and no kernel is built, loaded or called.
`swiglu` is the same choice for the SwiGLU layer's fused gate/up projection and activation.
All round the fp32 accumulator to the output dtype once (round to nearest even), as PyTorch's
bf16 matmul does; they differ only in the summation order inside the accumulator.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from trm_jax.kernels import cpu_gemm, target

IMPLS = ("auto", "xla", "xla_native", "amx", "avx512")


@jax.custom_vjp
def xla_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  return jnp.dot(x, w, preferred_element_type=jnp.float32).astype(x.dtype)


def _xla_matmul_fwd(x, w):
  return xla_matmul(x, w), (x, w)


def _xla_matmul_bwd(res, g):
  """dx = g w^T and dw = x^T g on the cotangent as it comes (bf16 in training), accumulated in
  fp32 and rounded once, as the forward. Plain autodiff would first cast g to fp32 (the
  transpose of the forward's rounding) and so run both backward GEMMs as fp32 x bf16: on a GPU
  fp32/TF32 GEMMs at half the bf16 rate or less, reading twice the bytes (BUILD_NOTES, "GPU
  training step"). The products are the same (bf16 x bf16 is exact in fp32); only the fp32
  summation order may differ."""
  x, w = res
  batch = tuple(range(x.ndim - 1))
  dx = jax.lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())),
                           preferred_element_type=jnp.float32).astype(x.dtype)
  dw = jax.lax.dot_general(x, g, ((batch, batch), ((), ())),
                           preferred_element_type=jnp.float32).astype(w.dtype)
  return dx, dw


xla_matmul.defvjp(_xla_matmul_fwd, _xla_matmul_bwd)


def xla_native_matmul(x: jax.Array, w: jax.Array) -> jax.Array:
  return jnp.dot(x, w)


def _xla_dot(impl: str):
  """XLA's dot for `impl` where no kernel runs: bf16 output for xla_native, else fp32 rounded."""
  return xla_native_matmul if impl == "xla_native" else xla_matmul


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _kernel_matmul(x: jax.Array, w: jax.Array, isa: str) -> jax.Array:
  return _kernel_fwd(x, w, isa)[0]


def _kernel_fwd(x, w, isa):
  x2 = x.reshape(-1, x.shape[-1])
  y = cpu_gemm.gemm(x2, w, isa=isa).reshape(*x.shape[:-1], w.shape[-1])
  return y, (x2, w)


def _linear_grads(isa, x2, w, g2, batch_shape):
  """(dx, dw) of y = x @ w from the cotangent g2 [M, N] of y, x2 = x as [M, K]."""
  dx = cpu_gemm.gemm(g2, w, isa=isa, trans_b=True).reshape(*batch_shape, w.shape[0])
  return dx, cpu_gemm.gemm(x2, g2, isa=isa, trans_a=True)


def _kernel_bwd(isa, res, g):
  x2, w = res
  return _linear_grads(isa, x2, w, g.reshape(-1, g.shape[-1]), g.shape[:-1])


_kernel_matmul.defvjp(_kernel_fwd, _kernel_bwd)


def xla_swiglu(x: jax.Array, w: jax.Array, dot=xla_matmul) -> jax.Array:
  gate, up = jnp.split(dot(x, w), 2, axis=-1)
  return jax.nn.silu(gate) * up


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _kernel_swiglu(x: jax.Array, w: jax.Array, isa: str) -> jax.Array:
  x2 = x.reshape(-1, x.shape[-1])
  h = cpu_gemm.swiglu(x2, w, isa=isa, with_gu=False)
  return h.reshape(*x.shape[:-1], w.shape[-1] // 2)


def _kernel_swiglu_fwd(x, w, isa):
  x2 = x.reshape(-1, x.shape[-1])
  h, gu = cpu_gemm.swiglu(x2, w, isa=isa, with_gu=True)
  return h.reshape(*x.shape[:-1], w.shape[-1] // 2), (x2, w, gu)


def _kernel_swiglu_bwd(isa, res, dh):
  x2, w, gu = res
  dgu = cpu_gemm.swiglu_bwd(dh.reshape(-1, dh.shape[-1]), gu, isa=isa)
  return _linear_grads(isa, x2, w, dgu, dh.shape[:-1])


_kernel_swiglu.defvjp(_kernel_swiglu_fwd, _kernel_swiglu_bwd)


def single_cpu_device() -> bool:
  """True when the trace is for one CPU device (`target.current()`): the only place for the
  kernels."""
  where = target.current()
  return where.platform == "cpu" and where.num_devices == 1


def kernel_isa(impl: str, dtype) -> str | None:
  """The ISA whose kernel `matmul(..., impl)` runs for operands of `dtype`, or None for XLA's
  dot (decided at trace time)."""
  if impl not in IMPLS:
    raise ValueError(f"matmul implementation {impl!r}; choose one of {IMPLS}")
  if (impl in ("xla", "xla_native") or jnp.dtype(dtype) != jnp.bfloat16
      or not single_cpu_device()):
    return None
  if impl == "auto":
    return cpu_gemm.best()
  if not cpu_gemm.available(impl):
    raise RuntimeError(f"matmul={impl!r} but its kernel is unavailable: "
                       f"{cpu_gemm.unavailable_reason(impl)}")
  return impl


def matmul(x: jax.Array, w: jax.Array, impl: str = "auto") -> jax.Array:
  """x [..., K] @ w [K, N] -> [..., N] in x.dtype (w must already be in x.dtype)."""
  isa = kernel_isa(impl, x.dtype)
  if isa is None:
    return _xla_dot(impl)(x, w)
  return jax.lax.platform_dependent(x, w, cpu=functools.partial(_kernel_matmul, isa=isa),
                                    default=xla_matmul)


def swiglu(x: jax.Array, w: jax.Array, impl: str = "auto") -> jax.Array:
  """silu(x @ w_gate) * (x @ w_up) for w = [w_gate | w_up] [K, 2I] (w in x.dtype).

  The kernel path fuses the activation into the GEMM (no [.., 2I] round trip through memory in
  the forward) and the activation's backward into one pass; it needs I % 16 == 0 (every
  official width is a multiple of 256).
  """
  isa = kernel_isa(impl, x.dtype)
  if isa is None or (w.shape[-1] // 2) % 16:
    return xla_swiglu(x, w, _xla_dot(impl))
  return jax.lax.platform_dependent(x, w, cpu=functools.partial(_kernel_swiglu, isa=isa),
                                    default=xla_swiglu)
