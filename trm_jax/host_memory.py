"""Host memory allocator settings that make XLA:CPU training steps faster.

XLA:CPU takes each step's temporaries (hundreds of MiB to GiB for a TRM step) from the C
allocator and gives them back at the end of the step. glibc serves blocks that large with
`mmap` (or from per-thread arenas that it trims with `madvise`), so every step the kernel maps
fresh zeroed pages and the step pays one page fault per 4 KiB it touches: 367,000 faults, about
0.35 s of a 2.7 s Sudoku mlp_t step on two cores (BUILD_NOTES.md, "CPU speed").

`retain_freed_memory()` tells glibc to keep freed memory in the process: one arena for all
threads (`M_ARENA_MAX`), no `mmap` for large blocks (`M_MMAP_MAX`), and no trimming of the heap
top (`M_TRIM_THRESHOLD`). After the first step the temporaries come from memory the process
already owns and a step faults zero pages. The cost: the process keeps its peak heap mapped
(resident memory grows by what fragmentation holds, about 1.3 GiB at batch 32 there).

glibc gives a thread an arena when it first allocates, and may hand arenas made before the
settings to later threads, so this only takes effect in a process that still has one thread:
call it before importing jax (which starts a thread). It is process-wide and cannot be undone,
so the library never calls it on its own; the training CLI (`TRM_JAX_HOST_MALLOC`) and the
benchmarks (`--host_malloc`) do.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
import threading

MODES = ("auto", "retain", "system")

# glibc <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
# mallopt takes an int, so the trim threshold stops at 2 GiB; a trim also keeps M_TOP_PAD bytes,
# so with both at the maximum glibc only ever gives back free heap top beyond 2 GiB.
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1),
             (_M_TOP_PAD, 2**31 - 1))

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


def _thread_count() -> int:
  try:
    return len(os.listdir("/proc/self/task"))
  except OSError:
    return threading.active_count()


def _cpu_backend_expected() -> bool:
  """Whether the default JAX backend will be the CPU, judged without starting it."""
  platforms = os.environ.get("JAX_PLATFORMS", "")
  if platforms:
    return platforms.split(",")[0].strip().lower() == "cpu"
  return not any(importlib.util.find_spec(name) for name in _ACCELERATOR_PLUGINS)


def retain_freed_memory() -> str | None:
  """Applies the glibc settings above; returns None, or why nothing was changed."""
  libc = _glibc()
  if libc is None:
    return "the C library is not glibc"
  threads = _thread_count()
  if threads > 1:
    # A thread that has allocated owns an arena of its own, and glibc may hand that arena to
    # later threads too: the settings would hold for some threads only.
    return (f"the process already runs {threads} threads (importing JAX starts one); call this "
            "before importing jax")
  for param, value in _SETTINGS:
    if libc.mallopt(param, value) != 1:
      return f"mallopt({param}, {value}) was refused"
  return None


def configure(mode: str, source: str = "host_malloc") -> str:
  """Applies `mode` (auto | retain | system) and returns a one-line account for the logs.

  auto: retain when the default backend will be the CPU (JAX_PLATFORMS=cpu, or no GPU/TPU plugin
  installed), else leave the allocator alone. retain: always try. system: leave it alone.
  `source` names where `mode` came from, for the error on a bad value.
  """
  if mode not in MODES:
    raise ValueError(f"{source} = {mode!r}: must be one of {', '.join(MODES)}")
  if mode == "system" or (mode == "auto" and not _cpu_backend_expected()):
    return "host malloc: system defaults"
  reason = retain_freed_memory()
  if reason is None:
    return "host malloc: freed memory is retained (one arena, no mmap, no trim)"
  return f"host malloc: system defaults ({reason})"
