"""Build, load and register the bf16 GEMM kernels of cpu_gemm.cc as XLA FFI targets on CPU.

One source, two builds (instruction sets, `ISAS`):
  "amx"    - Intel AMX tiles (Sapphire Rapids and later); targets trm_amx_{matmul,swiglu,...}.
  "avx512" - AVX512-BF16 (AMD Zen 4/5, Intel Cooper Lake and every AMX CPU);
             targets trm_avx512_{matmul,swiglu,...}.
Each is compiled on first use with the system C++ compiler (`$CXX`, else `g++` / `c++` /
`clang++`) against the XLA FFI headers bundled with jaxlib, into a cache directory
(`$TRM_JAX_KERNEL_CACHE`, default `~/.cache/trm_jax/kernels`), keyed by a hash of the source,
the jax version, the compiler and the flags. `available(isa)` is False, with a reason from
`unavailable_reason(isa)`, when the CPU lacks the instructions, the OS refuses AMX tile state,
no compiler is found or the build fails; callers then use XLA's own dot. `best()` is the
fastest one that works here (AMX before AVX512-BF16), or None.
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

SOURCE = pathlib.Path(__file__).with_name("cpu_gemm.cc")
ISAS = ("amx", "avx512")  # in order of preference
_KERNELS = {"matmul": "TrmMatmul", "swiglu": "TrmSwiGLU", "swiglu_bwd": "TrmSwiGLUBwd"}
_AVX512 = ("avx512f", "avx512bw", "avx512vl", "avx512_bf16")
REQUIRED_CPU_FLAGS = {"amx": ("amx_tile", "amx_bf16", *_AVX512), "avx512": _AVX512}
_COMPILE_FLAGS = {
    "amx": ["-DTRM_GEMM_AMX=1", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16",
            "-mamx-tile", "-mamx-bf16"],
    "avx512": ["-DTRM_GEMM_AMX=0", "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512bf16"],
}


def target(isa: str, kernel: str) -> str:
  """The FFI target name of `kernel` (matmul | swiglu | swiglu_bwd) built for `isa`."""
  return f"trm_{isa}_{kernel}"


def cpu_flags() -> set[str]:
  try:
    text = pathlib.Path("/proc/cpuinfo").read_text()
  except OSError:
    return set()
  for line in text.splitlines():
    if line.startswith("flags"):
      return set(line.split(":", 1)[1].split())
  return set()


def compiler() -> str | None:
  for name in (os.environ.get("CXX"), "g++", "c++", "clang++"):
    if name and shutil.which(name):
      return shutil.which(name)
  return None


def cache_dir() -> pathlib.Path:
  root = os.environ.get("TRM_JAX_KERNEL_CACHE")
  return pathlib.Path(root) if root else pathlib.Path.home() / ".cache" / "trm_jax" / "kernels"


def build(isa: str, cxx: str) -> pathlib.Path:
  """Compiles the shared library for `isa` if the cache lacks it; returns its path."""
  flags = ["-O3", "-std=c++20", "-shared", "-fPIC", *_COMPILE_FLAGS[isa],
           f"-I{jax.ffi.include_dir()}"]
  key = hashlib.sha256("\n".join([SOURCE.read_text(), jax.__version__, cxx, *flags])
                       .encode()).hexdigest()[:16]
  out = cache_dir() / f"cpu_gemm-{isa}-{key}.so"
  if out.exists():
    return out
  out.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
    tmp_out = pathlib.Path(tmp) / out.name
    cmd = [cxx, *flags, str(SOURCE), "-o", str(tmp_out)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
      raise RuntimeError(f"compiling {SOURCE.name} failed ({' '.join(cmd)}):\n{proc.stderr[-4000:]}")
    os.replace(tmp_out, out)  # atomic: concurrent builders never see a partial file
  return out


def missing_support(isa: str) -> str | None:
  """Why `isa`'s kernels cannot be built here before trying (platform, CPU flags, compiler)."""
  if isa not in ISAS:
    raise ValueError(f"unknown kernel ISA {isa!r}; choose one of {ISAS}")
  if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
    return f"the CPU kernels need Linux on x86-64 (this is {platform.system()} {platform.machine()})"
  missing = [f for f in REQUIRED_CPU_FLAGS[isa] if f not in cpu_flags()]
  if missing:
    return f"this CPU lacks {', '.join(missing)}"
  if compiler() is None:
    return "no C++ compiler found ($CXX, g++, c++, clang++)"
  return None


@functools.cache
def _load(isa: str) -> str | None:
  """Builds, loads and registers `isa`'s kernels once; None on success, else why not."""
  reason = missing_support(isa)
  if reason is not None:
    return reason
  try:
    lib = ctypes.CDLL(str(build(isa, compiler())))
  except (RuntimeError, OSError) as e:
    return str(e)
  if isa == "amx" and lib.trm_amx_request_permission() != 0:
    return "the kernel refused AMX tile state (arch_prctl ARCH_REQ_XCOMP_PERM failed)"
  for kernel, symbol in _KERNELS.items():
    jax.ffi.register_ffi_target(target(isa, kernel), jax.ffi.pycapsule(getattr(lib, symbol)),
                                platform="cpu")
  return None


def available(isa: str) -> bool:
  """True when `isa`'s kernels are built, loaded and registered for the CPU backend."""
  return _load(isa) is None


def unavailable_reason(isa: str) -> str | None:
  return _load(isa)


def best() -> str | None:
  """The preferred ISA whose kernels work on this machine, or None."""
  return next((isa for isa in ISAS if available(isa)), None)


def gemm(a: jax.Array, b: jax.Array, *, isa: str, trans_a: bool = False, trans_b: bool = False,
         out_dtype=None) -> jax.Array:
  """out = op(a) @ op(b) for rank-2 bf16 `a`, `b` (op = transpose when asked); CPU only."""
  M = a.shape[1] if trans_a else a.shape[0]
  N = b.shape[0] if trans_b else b.shape[1]
  out = jax.ShapeDtypeStruct((M, N), out_dtype or a.dtype)
  return jax.ffi.ffi_call(target(isa, "matmul"), out, vmap_method="sequential")(
      a, b, trans_a=trans_a, trans_b=trans_b)


def swiglu(x: jax.Array, w: jax.Array, *, isa: str, with_gu: bool):
  """h = silu(x @ w[:, :I]) * (x @ w[:, I:]) for bf16 x [M, K], w [K, 2I]; CPU only.

  Returns h [M, I], or (h, gu) with gu = x @ w [M, 2I] (bf16) when `with_gu`.
  """
  M, I = x.shape[0], w.shape[1] // 2
  h = jax.ShapeDtypeStruct((M, I), x.dtype)
  gu = jax.ShapeDtypeStruct((M, 2 * I) if with_gu else (0, 0), x.dtype)
  h, gu = jax.ffi.ffi_call(target(isa, "swiglu"), (h, gu), vmap_method="sequential")(
      x, w, with_gu=with_gu)
  return (h, gu) if with_gu else h


def swiglu_bwd(dh: jax.Array, gu: jax.Array, *, isa: str) -> jax.Array:
  """Cotangent of x @ w, [M, 2I], from that of h ([M, I]) and the saved gu; CPU only."""
  out = jax.ShapeDtypeStruct(gu.shape, gu.dtype)
  return jax.ffi.ffi_call(target(isa, "swiglu_bwd"), out, vmap_method="sequential")(dh, gu)
