"""The local backend: a sweep's runs as subprocesses on this machine, N at a time.

Each run's output goes to `<workdir>/launch.log` (appended, so a re-run that resumes keeps the
first attempt's log above its own). On a machine with several GPUs, `gpus_per_run` gives each of
the `parallel` slots its own GPUs (CUDA_VISIBLE_DEVICES); otherwise every run would see, and
JAX would preallocate memory on, all of them.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib
import queue
import shlex
import subprocess
import sys
from typing import Sequence

from trm_jax.sweep import Run

LOG_FILE = "launch.log"


def check_root(root: str) -> None:
  if "://" in root:
    raise ValueError(f"--root {root}: the local backend writes runs (and their logs) to a local "
                     "directory")


def slot_env(slot: int, gpus_per_run: int) -> dict[str, str]:
  """The environment a run gets in `slot` (0 .. parallel - 1)."""
  if not gpus_per_run:
    return {}
  first = slot * gpus_per_run
  return {"CUDA_VISIBLE_DEVICES": ",".join(str(first + k) for k in range(gpus_per_run))}


def dry_run(runs: Sequence[Run], parallel: int, python: str = sys.executable,
            gpus_per_run: int = 0) -> str:
  lines = [f"# local: {len(runs)} runs, {parallel} at a time"]
  if gpus_per_run:
    for slot in range(parallel):
      env = slot_env(slot, gpus_per_run)
      lines.append(f"# slot {slot}: " + " ".join(f"{k}={v}" for k, v in env.items()))
  lines += [f"{run.command(python)} >> {shlex.quote(f'{run.workdir}/{LOG_FILE}')} 2>&1"
            for run in runs]
  return "\n".join(lines)


def launch(runs: Sequence[Run], parallel: int, python: str = sys.executable,
           gpus_per_run: int = 0) -> list[int]:
  """Runs them all (`parallel` at a time); returns their exit codes, in order."""
  free_slots = queue.Queue()
  for slot in range(parallel):
    free_slots.put(slot)

  def run_one(run: Run) -> int:
    workdir = pathlib.Path(run.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    slot = free_slots.get()
    env = {**os.environ, **slot_env(slot, gpus_per_run)}
    print(f"start {run.name} (slot {slot}): {run.command(python)}", flush=True)
    try:
      with open(workdir / LOG_FILE, "a") as log:
        code = subprocess.run(run.argv(python), stdout=log, stderr=subprocess.STDOUT,
                              env=env).returncode
    finally:
      free_slots.put(slot)
    status = "done" if code == 0 else f"FAILED (exit {code}; see {workdir / LOG_FILE})"
    print(f"{status}: {run.name}", flush=True)
    return code

  with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
    return list(pool.map(run_one, runs))
