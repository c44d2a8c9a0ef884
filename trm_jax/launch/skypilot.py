"""The SkyPilot backend: one task YAML per run, launched as a managed job (`sky jobs launch`).

A managed job is relaunched after a preemption (and, up to `max_restarts_on_errors` times,
after a failure); the relaunched command finds its checkpoints in the run's workdir and resumes,
so the workdir must outlive the machines: a bucket (gs://...). SkyPilot runs the task's `run` on
every host of a TPU pod slice (one SkyPilot node: `--accelerator tpu-v5p-16` has 2 hosts), where
`jax.distributed.initialize()` finds the slice by itself; for GPU nodes (`--num_nodes` > 1) the
command names the coordinator from SkyPilot's node variables.

The hosts share no disk: with the workdir on a bucket, each host keeps the TFDS data in
`LOCAL_DATA_DIR`, a folder of its own, and builds it there from data.manual_dir (a bucket, or
the generated CSVs in the workdir) when it is not there (`datasets.prepare_on_every_host`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import tempfile
from typing import Any, Sequence

import yaml

from trm_jax.sweep import Run

PYTHON = "python3"
COORDINATOR_PORT = "8476"  # any free port on the first node
# SkyPilot sets these on every node (docs.skypilot.co: running-jobs/environment-variables).
MULTI_NODE_FLAGS = ('--coordinator_address="$(echo "$SKYPILOT_NODE_IPS" | head -n1)'
                    ':$TRM_JAX_COORDINATOR_PORT" --num_processes="$SKYPILOT_NUM_NODES" '
                    '--process_id="$SKYPILOT_NODE_RANK"')


# Each host's own copy of the TFDS data when the workdir is a bucket (array_record files are
# local-only); the same path on every host. A relaunched job's fresh hosts build it again.
LOCAL_DATA_DIR = "/tmp/trm_jax/tfds"
DATA_DIR_FLAG = "--config.data.data_dir="


def with_local_data_dir(run: Run) -> Run:
  """`run` with its TFDS data on each host's local disk when its workdir is a bucket (where
  the data would otherwise default to, and where it cannot live) and it names no data_dir."""
  if "://" not in run.workdir or any(f.startswith(DATA_DIR_FLAG) for f in run.flags):
    return run
  return dataclasses.replace(run, flags=(*run.flags, DATA_DIR_FLAG + LOCAL_DATA_DIR))


def check_root(root: str) -> None:
  if "://" not in root and not os.path.isabs(root):
    raise ValueError(f"--root {root}: a SkyPilot run's workdir must survive the machine and be "
                     "shared by its hosts: give a bucket (gs://BUCKET/runs) or an absolute path "
                     "on a shared mount")


def job_name(sweep_name: str, run: Run) -> str:
  """A name SkyPilot accepts for a job and its cluster (lower case, digits and dashes)."""
  return re.sub(r"[^a-z0-9]+", "-", f"trm-{sweep_name}-{run.name}".lower()).strip("-")[:63]


def task_config(run: Run, sweep_name: str, accelerator: str, num_nodes: int = 1,
                spot: bool = False, infra: str | None = None, max_restarts_on_errors: int = 0,
                repo_dir: str | None = None) -> dict[str, Any]:
  """The task YAML (as a dict) of one run. `repo_dir`: the checkout SkyPilot copies to every
  node (default: the current directory)."""
  tpu = accelerator.lower().startswith("tpu-")
  if num_nodes < 1:
    raise ValueError(f"--num_nodes {num_nodes}: must be at least 1")
  if tpu and num_nodes != 1:
    raise ValueError(f"--num_nodes {num_nodes} with {accelerator}: a TPU pod slice is one "
                     "SkyPilot node whose hosts come with the accelerator; leave --num_nodes 1")
  command = with_local_data_dir(run).command(PYTHON)
  envs = {}
  if num_nodes > 1:
    command = f"{command} {MULTI_NODE_FLAGS}"
    envs["TRM_JAX_COORDINATOR_PORT"] = COORDINATOR_PORT
  resources: dict[str, Any] = {"accelerators": accelerator}
  if infra:
    resources["infra"] = infra
  if spot:
    resources["use_spot"] = True
  resources["job_recovery"] = {"max_restarts_on_errors": max_restarts_on_errors}
  task = {"name": job_name(sweep_name, run), "workdir": os.path.abspath(repo_dir or os.curdir),
          "num_nodes": num_nodes, "resources": resources}
  if envs:
    task["envs"] = envs
  task["setup"] = f"bash launch/setup.sh {'tpu' if tpu else 'cuda'}"
  task["run"] = command + "\n"
  return task


class _Dumper(yaml.SafeDumper):
  """Multi-line strings (the run command) as literal blocks, as one writes them by hand."""


_Dumper.add_representer(str, lambda dumper, value: dumper.represent_scalar(
    "tag:yaml.org,2002:str", value, style="|" if "\n" in value else None))


def to_yaml(task: dict[str, Any]) -> str:
  return yaml.dump(task, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=10_000)


def launch_command(path: str, name: str) -> list[str]:
  return ["sky", "jobs", "launch", "--yes", "--detach-run", "--name", name, path]


def _checked_names(tasks: Sequence[dict[str, Any]]) -> None:
  names = [t["name"] for t in tasks]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f"runs map to the same SkyPilot job name(s) {duplicates}: rename the "
                     "sweep's runs")


def dry_run(tasks: Sequence[dict[str, Any]]) -> str:
  _checked_names(tasks)
  parts = []
  for task in tasks:
    path = f"{task['name']}.yaml"
    parts.append(f"# {path}\n{to_yaml(task)}# $ {' '.join(launch_command(path, task['name']))}")
  return "\n\n".join(parts)


def launch(tasks: Sequence[dict[str, Any]]) -> list[int]:
  """Submits every task as a managed job; returns the `sky` exit codes, in order."""
  _checked_names(tasks)
  codes = []
  with tempfile.TemporaryDirectory(prefix="trm_jax_sky_") as directory:
    for task in tasks:
      path = os.path.join(directory, f"{task['name']}.yaml")
      with open(path, "w") as f:
        f.write(to_yaml(task))
      codes.append(subprocess.run(launch_command(path, task["name"])).returncode)
  return codes
