"""The SLURM backend, through submitit: one job per run, one task per JAX process.

JAX's SLURM detection (`jax.distributed.initialize()` in `trm_jax.main`) takes the coordinator,
process count and rank from the task's SLURM variables and gives each process the GPU numbered by
its local rank, so a node runs one task per GPU (`--gpus_per_node`; one task per node without
GPUs). Before the time limit (or on preemption) submitit requeues the job; the requeued command
resumes from the checkpoints in the run's workdir, which must be on the cluster's shared
filesystem. submitit's own files (the sbatch script, logs) go to `<workdir>/slurm/`.
"""

from __future__ import annotations

import os
import pathlib
import shlex
import signal
import subprocess
import sys
from typing import Any, Sequence

import submitit
from submitit.slurm import slurm as submitit_slurm

from trm_jax.sweep import Run


def _ignore_warning_signal() -> None:
  signal.signal(signal.SIGUSR2, signal.SIG_IGN)


class TrainingCommand(submitit.helpers.Checkpointable):
  """`python -m trm_jax.main ...` in the task; on timeout or preemption submitit resubmits this
  same command (Checkpointable), which resumes from the workdir.

  SLURM's warning signal (USR2, `signal_delay_s` before the limit) reaches every process of the
  step; it is submitit's cue to requeue, and would kill the training process outright, so the
  command ignores it. The requeue then stops the job with SIGTERM, on which `trm_jax.main` saves a
  checkpoint and exits (within the cluster's KillWait).
  """

  def __init__(self, argv: list[str]):
    self.argv = argv

  def __call__(self) -> None:
    subprocess.run(self.argv, check=True, preexec_fn=_ignore_warning_signal)


def check_root(root: str) -> None:
  if "://" in root or not os.path.isabs(root):
    raise ValueError(f"--root {root}: a SLURM run's workdir must be an absolute path on the "
                     "cluster's shared filesystem")


def parameters_for(run: Run, sweep_name: str, nodes: int = 1, gpus_per_node: int = 0,
                   partition: str | None = None, timeout_min: int = 24 * 60,
                   cpus_per_task: int | None = None, account: str | None = None
                   ) -> dict[str, Any]:
  """submitit's sbatch parameters (its names) for one run."""
  if nodes < 1 or gpus_per_node < 0:
    raise ValueError(f"--num_nodes {nodes} / --gpus_per_node {gpus_per_node}: need at least one "
                     "node and no negative GPU count")
  parameters: dict[str, Any] = dict(
      job_name=f"trm-{sweep_name}-{run.name}", nodes=nodes,
      ntasks_per_node=max(gpus_per_node, 1), time=timeout_min, stderr_to_stdout=True,
      signal_delay_s=180)  # time for a checkpoint between the warning signal and the kill
  if gpus_per_node:
    parameters["gpus_per_node"] = gpus_per_node
  for name, value in (("partition", partition), ("cpus_per_task", cpus_per_task),
                      ("account", account)):
    if value is not None:
      parameters[name] = value
  return parameters


def folder(run: Run) -> pathlib.Path:
  return pathlib.Path(f"{run.workdir}/slurm/%j").absolute()


def sbatch_script(run: Run, parameters: dict[str, Any], python: str = sys.executable) -> str:
  """The sbatch script submitit writes for the run's job (each task then runs the pickled
  `TrainingCommand`). Built by submitit's own function, the one its executor calls; unlike the
  executor it needs no SLURM commands on this machine, so a dry run works anywhere."""
  command = " ".join([shlex.quote(python), "-u -m submitit.core._submit",
                      shlex.quote(str(folder(run)))])
  return submitit_slurm._make_sbatch_string(command=command, folder=folder(run), **parameters)


def dry_run(runs: Sequence[Run], parameters: Sequence[dict[str, Any]],
            python: str = sys.executable) -> str:
  parts = []
  for run, params in zip(runs, parameters):
    parts.append(f"# {run.name}: sbatch script (submitit)\n{sbatch_script(run, params, python)}\n"
                 f"# each task runs: {run.command(python)}")
  return "\n\n".join(parts)


def launch(runs: Sequence[Run], parameters: Sequence[dict[str, Any]],
           python: str = sys.executable) -> list[str]:
  """Submits one job per run; returns the SLURM job ids."""
  ids = []
  for run, params in zip(runs, parameters):
    executor = submitit.SlurmExecutor(folder=folder(run), python=shlex.quote(python))
    executor.update_parameters(**params)
    job = executor.submit(TrainingCommand(run.argv(python)))
    print(f"submitted {run.name}: job {job.job_id}, logs in {run.workdir}/slurm/{job.job_id}",
          flush=True)
    ids.append(job.job_id)
  return ids
