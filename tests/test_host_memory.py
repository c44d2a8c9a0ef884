"""host_memory: the settings stop XLA:CPU from page-faulting its temporaries every call."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import pytest

from trm_jax import host_memory

REPO = pathlib.Path(__file__).resolve().parents[1]

# Two 64 MiB temporaries per call, allocated by XLA for the computation (not by a kernel on a
# worker thread, as jnp.cumsum's scratch is: glibc mmaps that in any case); counts the minor page
# faults of each of 20 calls after three warm-up calls.
PROBE = textwrap.dedent("""
    import json, resource, sys
    sys.path.insert(0, {repo!r})
    from trm_jax import host_memory
    account = host_memory.configure({mode!r})
    import jax, jax.numpy as jnp
    from jax._src import xla_bridge

    @jax.jit
    def f(x):
      return (jnp.sin(x)[::-1] * jnp.cos(x).T).sum()

    x = jnp.ones((4096, 4096), jnp.float32)
    for _ in range(3):
      f(x).block_until_ready()
    faults = []
    for _ in range(20):
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      f(x).block_until_ready()
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({{"account": account, "faults": faults,
                      "async": xla_bridge._CPU_ENABLE_ASYNC_DISPATCH.value}}))
""")

needs_glibc = pytest.mark.skipif(host_memory._glibc() is None,
                                 reason="the allocator settings are glibc's; this libc is not")


def run_probe(mode: str) -> dict:
  proc = subprocess.run([sys.executable, "-c", PROBE.format(repo=str(REPO), mode=mode)],
                        capture_output=True, text=True, timeout=300,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_glibc
def test_retain_stops_per_call_page_faults():
  system = run_probe("system")
  retain = run_probe("retain")
  assert system["account"] == "host malloc: system defaults" and system["async"]
  assert "retained" in retain["account"] and not retain["async"]
  # 2 x 64 MiB of temporaries = 32768 pages, which glibc maps afresh on every call by default.
  assert min(system["faults"]) > 16384, system
  # Retained, the temporaries come from the main thread's heap, which keeps them once grown:
  # the heap may grow again after the warm-up when other allocations take its top (seen in CI
  # once on one timed call, once on two of the 20), but calls no longer fault as a rule, where
  # with the system defaults every call does.
  assert sum(n > 1000 for n in retain["faults"]) <= 3, retain
  assert sorted(retain["faults"])[10] < 100, retain


@needs_glibc
def test_auto_retains_on_the_cpu_backend():
  assert "retained" in run_probe("auto")["account"]


def test_refuses_once_jax_runs():
  jax.devices()  # this pytest process has started JAX's backends
  reason = host_memory.retain_freed_memory()
  assert reason is not None
  assert "already running" in reason or "glibc" in reason
  assert "system defaults" in host_memory.configure("retain")


@needs_glibc
def test_cli_applies_the_environment_setting_in_main_not_at_import():
  # Importing the CLI applies nothing (the dispatch flag keeps its default), and its main()
  # applies the setting before JAX's backends start (applied at all means that: it refuses
  # after).
  code = ("import jax; from trm_jax import main; "
          "print(jax.config.read('jax_cpu_enable_async_dispatch')); "
          "print(main.apply_host_settings()); "
          "print(jax.config.read('jax_cpu_enable_async_dispatch'))")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=300, cwd=REPO, env=dict(os.environ, JAX_PLATFORMS="cpu",
                                                         TRM_JAX_HOST_MALLOC="retain"))
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.splitlines()
  assert lines[0] == "True" and lines[1].startswith("host malloc: freed memory is retained")
  assert lines[2] == "False"
  bad = subprocess.run([sys.executable, "-m", "trm_jax.main", "--config",
                        "experiments/sudoku.py:smoke,runlocal", "--workdir", "/nonexistent/x"],
                       capture_output=True, text=True, timeout=300, cwd=REPO,
                       env=dict(os.environ, JAX_PLATFORMS="cpu",
                                TRM_JAX_HOST_MALLOC="sometimes"))
  assert bad.returncode != 0
  assert "TRM_JAX_HOST_MALLOC = 'sometimes'" in bad.stderr


def test_system_mode_changes_nothing_and_bad_modes_are_named():
  assert host_memory.configure("system") == "host malloc: system defaults"
  with pytest.raises(ValueError, match="host_malloc = 'fast'"):
    host_memory.configure("fast")
