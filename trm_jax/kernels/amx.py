"""Build, load and register the AMX bf16 GEMM (amx_matmul.cc) as the XLA FFI target
`trm_amx_matmul` on CPU.

The C++ source ships with the package and is compiled on first use with the system C++
compiler (`$CXX`, else `g++` / `c++`) against the XLA FFI headers bundled with jaxlib, into a
cache directory (`$TRM_JAX_KERNEL_CACHE`, default `~/.cache/trm_jax/kernels`), keyed by a hash
of the source, the jax version and the compiler. `available()` is False, with a reason from
`unavailable_reason()`, when the CPU lacks AMX-BF16, the OS refuses the tile state, no compiler
is found or the build fails; callers then use XLA's own dot.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile

import jax

TARGETS = {"trm_amx_matmul": "TrmAmxMatmul", "trm_amx_swiglu": "TrmAmxSwiGLU",
           "trm_amx_swiglu_bwd": "TrmAmxSwiGLUBwd"}
SOURCE = pathlib.Path(__file__).with_name("amx_matmul.cc")
_REQUIRED_CPU_FLAGS = ("amx_tile", "amx_bf16", "avx512_bf16", "avx512bw", "avx512vl")


def cpu_flags() -> set[str]:
  try:
    text = pathlib.Path("/proc/cpuinfo").read_text()
  except OSError:
    return set()
  for line in text.splitlines():
    if line.startswith("flags"):
      return set(line.split(":", 1)[1].split())
  return set()


def _compiler() -> str | None:
  for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
    if name and shutil.which(name):
      return shutil.which(name)
  return None


def cache_dir() -> pathlib.Path:
  root = os.environ.get("TRM_JAX_KERNEL_CACHE")
  return pathlib.Path(root) if root else pathlib.Path.home() / ".cache" / "trm_jax" / "kernels"


def build(compiler: str) -> pathlib.Path:
  """Compiles the shared library if the cache lacks it; returns its path."""
  flags = ["-O3", "-std=c++20", "-shared", "-fPIC", "-mavx512f", "-mavx512bw", "-mavx512vl",
           "-mavx512bf16", "-mamx-tile", "-mamx-bf16", f"-I{jax.ffi.include_dir()}"]
  key = hashlib.sha256("\n".join([SOURCE.read_text(), jax.__version__, compiler, *flags])
                       .encode()).hexdigest()[:16]
  out = cache_dir() / f"amx_matmul-{key}.so"
  if out.exists():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
    tmp_out = pathlib.Path(tmp) / out.name
    cmd = [compiler, *flags, str(SOURCE), "-o", str(tmp_out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
      raise RuntimeError(f"compiling {SOURCE.name} failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
    os.replace(tmp_out, out)  # atomic: concurrent builders never see a partial file
  return out


@functools.cache
def _load() -> str | None:
  """Builds, loads and registers the kernels once; None on success, else why not."""
  if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
    return f"AMX kernels need Linux on x86-64 (this is {platform.system()} {platform.machine()})"
  missing = [f for f in _REQUIRED_CPU_FLAGS if f not in cpu_flags()]
  if missing:
    return f"this CPU lacks {', '.join(missing)}"
  compiler = _compiler()
  if compiler is None:
    return "no C++ compiler found ($CXX, g++, c++, clang++)"
  try:
    lib = ctypes.CDLL(str(build(compiler)))
  except (RuntimeError, OSError) as e:
    return str(e)
  if lib.trm_amx_request_permission() != 0:
    return "the kernel refused AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM failed)"
  for target, symbol in TARGETS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol)), platform="cpu")
  return None


def available() -> bool:
  """True when the AMX kernels are built, loaded and registered for the CPU backend."""
  return _load() is None


def unavailable_reason() -> str | None:
  return _load()


def gemm(a: jax.Array, b: jax.Array, *, trans_a: bool = False, trans_b: bool = False,
         out_dtype=None) -> jax.Array:
  """out = op(a) @ op(b) for rank-2 bf16 `a`, `b` (op = transpose when asked); CPU only."""
  M = a.shape[1] if trans_a else a.shape[0]
  N = b.shape[0] if trans_b else b.shape[1]
  out = jax.ShapeDtypeStruct((M, N), out_dtype or a.dtype)
  return jax.ffi.ffi_call("trm_amx_matmul", out, vmap_method="sequential")(
      a, b, trans_a=trans_a, trans_b=trans_b)


def swiglu(x: jax.Array, w: jax.Array, *, with_gu: bool):
  """h = silu(x @ w[:, :I]) * (x @ w[:, I:]) for bf16 x [M, K], w [K, 2I]; CPU only.

  Returns h [M, I], or (h, gu) with gu = x @ w [M, 2I] (bf16) when `with_gu`.
  """
  M, I = x.shape[0], w.shape[1] // 2
  h = jax.ShapeDtypeStruct((M, I), x.dtype)
  gu = jax.ShapeDtypeStruct((M, 2 * I) if with_gu else (0, 0), x.dtype)
  h, gu = jax.ffi.ffi_call("trm_amx_swiglu", (h, gu), vmap_method="sequential")(
      x, w, with_gu=with_gu)
  return (h, gu) if with_gu else h


def swiglu_bwd(dh: jax.Array, gu: jax.Array) -> jax.Array:
  """Cotangent of x @ w, [M, 2I], from that of h ([M, I]) and the saved gu; CPU only."""
  out = jax.ShapeDtypeStruct(gu.shape, gu.dtype)
  return jax.ffi.ffi_call("trm_amx_swiglu_bwd", out, vmap_method="sequential")(dh, gu)
