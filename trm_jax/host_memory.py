"""Host memory settings that make XLA:CPU training steps faster.

XLA:CPU takes each step's temporaries (hundreds of MiB to GiB for a TRM step) from the C
allocator and gives them back at the end of the step. glibc serves blocks that large with
`mmap` (or from per-thread arenas that it trims with `madvise`), so every step the kernel maps
fresh zeroed pages and the step pays one page fault per 4 KiB it touches: 367,000 faults, about
0.35 s of a 2.7 s Sudoku mlp_t step on two cores (BUILD_NOTES.md, "CPU speed").

`retain_freed_memory()` tells glibc to keep freed memory in the process: no `mmap` for large
blocks (`M_MMAP_MAX`) and no trimming of the heap top (`M_TRIM_THRESHOLD`, `M_TOP_PAD`); and it
tells JAX to run single-device CPU computations on the calling thread
(`jax_cpu_enable_async_dispatch=False`). The second half matters because glibc gives each
thread its own arena, of at most 64 MiB, and serves anything larger on a worker thread with
`mmap` whatever the settings; with asynchronous dispatch XLA allocates the step's temporaries on
a worker thread, synchronously on the main thread, whose arena is the heap. After the first
step the temporaries come from memory the process already owns and a step faults no pages.
The cost: the process keeps its peak heap mapped, and the Python thread waits for each
computation (it overlaps no host work with one). JAX dispatches computations over several
devices asynchronously regardless, so on a multi-device CPU mesh the faults remain.

An earlier version put every thread on the one arena (`M_ARENA_MAX=1`) instead: as many page
faults saved, but 1.3 GiB more resident memory at batch 32 and evaluation about 7% slower from
contention on the arena's lock (BUILD_NOTES.md).

The dispatch setting must be made before JAX creates its CPU backend. Both are process-wide and
cannot be undone, so the library never applies them on its own; the training CLI
(`TRM_JAX_HOST_MALLOC`) and the benchmarks (`--host_malloc`) do.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys

MODES = ("auto", "retain", "system")

# glibc <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
# mallopt takes an int, so the trim threshold stops at 2 GiB; a trim also keeps M_TOP_PAD bytes,
# so with both at the maximum glibc only ever gives back free heap top beyond 2 GiB.
_SETTINGS = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1), (_M_TOP_PAD, 2**31 - 1))

# Accelerator plugins whose presence means the default backend is probably not the CPU.
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                        "jax_rocm7_plugin", "libtpu")


def _glibc():
  """The process's C library if it is glibc, else None."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL(None)
    version = libc.gnu_get_libc_version
  except (OSError, AttributeError):  # musl, or no symbol table to search
    return None
  version.restype = ctypes.c_char_p
  return libc if version() else None


def _cpu_backend_expected() -> bool:
  """Whether the default JAX backend will be the CPU, judged without starting it."""
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip().lower() == "cpu"
  return not any(importlib.util.find_spec(name) for name in _ACCELERATOR_PLUGINS)


def retain_freed_memory(jax_dispatch: bool = True) -> str | None:
  """Applies the settings above (the dispatch one only if `jax_dispatch`; a process that runs
  no JAX computation needs only glibc's); returns None, or why nothing was changed."""
  libc = _glibc()
  if libc is None:
    return "the C library is not glibc"
  if jax_dispatch:
    import jax
    from jax._src import xla_bridge
    if xla_bridge.backends_are_initialized():
      return "JAX's backends are already running; call this before the first JAX computation"
  for param, value in _SETTINGS:
    if libc.mallopt(param, value) != 1:
      return f"mallopt({param}, {value}) was refused"
  if jax_dispatch:
    jax.config.update("jax_cpu_enable_async_dispatch", False)
  return None


def configure(mode: str, source: str = "host_malloc", jax_dispatch: bool = True) -> str:
  """Applies `mode` (auto | retain | system) and returns a one-line account for the logs.

  auto: retain when the default backend will be the CPU (JAX_PLATFORMS=cpu, or no GPU/TPU plugin
  installed), else leave the allocator alone. retain: always try. system: leave it alone.
  `source` names where `mode` came from, for the error on a bad value. `jax_dispatch=False`
  (for a process that runs no JAX computation, e.g. the PyTorch side of a comparison) leaves
  JAX alone and changes glibc's settings only.
  """
  if mode not in MODES:
    raise ValueError(f"{source} = {mode!r}: must be one of {', '.join(MODES)}")
  if mode == "system" or (mode == "auto" and not _cpu_backend_expected()):
    return "host malloc: system defaults"
  reason = retain_freed_memory(jax_dispatch)
  if reason is not None:
    return f"host malloc: system defaults ({reason})"
  return ("host malloc: freed memory is retained (no mmap, no trim"
          + (", synchronous CPU dispatch)" if jax_dispatch else ")"))
