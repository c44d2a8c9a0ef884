"""The local backend: a sweep's runs as subprocesses on this machine, N at a time.

Each run's output goes to `<workdir>/launch.log` (appended, so a re-run that resumes keeps the
first attempt's log above its own).
"""

from __future__ import annotations

import concurrent.futures
import pathlib
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


def dry_run(runs: Sequence[Run], parallel: int, python: str = sys.executable) -> str:
  lines = [f"# local: {len(runs)} runs, {parallel} at a time"]
  lines += [f"{run.command(python)} >> {shlex.quote(f'{run.workdir}/{LOG_FILE}')} 2>&1"
            for run in runs]
  return "\n".join(lines)


def launch(runs: Sequence[Run], parallel: int, python: str = sys.executable) -> list[int]:
  """Runs them all (`parallel` at a time); returns their exit codes, in order."""
  def run_one(run: Run) -> int:
    workdir = pathlib.Path(run.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"start {run.name}: {run.command(python)}", flush=True)
    with open(workdir / LOG_FILE, "a") as log:
      code = subprocess.run(run.argv(python), stdout=log, stderr=subprocess.STDOUT).returncode
    status = "done" if code == 0 else f"FAILED (exit {code}; see {workdir / LOG_FILE})"
    print(f"{status}: {run.name}", flush=True)
    return code

  with concurrent.futures.ThreadPoolExecutor(max_workers=parallel) as pool:
    return list(pool.map(run_one, runs))
