r"""Launch a sweep declared in an experiment file (its `get_sweep`).

    python -m trm_jax.launch --config experiments/sudoku.py --sweep smoke --root runs \
        --backend local --parallel 2 [--config.train.max_steps=100 ...] [--dry_run]
    python -m trm_jax.launch --config experiments/sudoku.py --sweep official \
        --root gs://BUCKET/runs --backend skypilot --accelerator tpu-v5p-16 --spot \
        --config.data.manual_dir=gs://BUCKET/data/sudoku-extreme  # each host builds its data
    python -m trm_jax.launch --config experiments/arc.py --sweep schemes \
        --root /shared/runs --backend slurm --num_nodes 2 --gpus_per_node 8 --partition gpu

Every run is `python -m trm_jax.main --config FILE:VARIANT --workdir ROOT/SWEEP/NAME
--config.KEY=VALUE ...`; launching the sweep again resumes each run from its workdir. Extra
`--config.KEY=VALUE` arguments go to every run. All runs are checked (keys, values, the
model and training validation) before the first one starts. `--dry_run` prints the commands /
task YAMLs / sbatch scripts and runs nothing.
"""

from __future__ import annotations

import argparse
import sys

from trm_jax import sweep

BACKENDS = ("local", "skypilot", "slurm")


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="python -m trm_jax.launch", description=__doc__.split("\n\n")[0],
      epilog="Any --config.KEY=VALUE argument is passed to every run.")
  parser.add_argument("--config", required=True, help="experiment file with get_sweep")
  parser.add_argument("--sweep", required=True, help="sweep name[,runlocal]")
  parser.add_argument("--root", required=True, help="runs go to ROOT/SWEEP/RUN_NAME")
  parser.add_argument("--backend", choices=BACKENDS, default="local")
  parser.add_argument("--dry_run", action="store_true", help="print what would run; run nothing")
  parser.add_argument("--only", action="append", default=[], metavar="RUN_NAME",
                      help="launch only these runs of the sweep (repeatable)")
  local = parser.add_argument_group("local")
  local.add_argument("--parallel", type=int, default=1, help="runs at a time")
  local.add_argument("--gpus_per_run", type=int, default=0,
                     help="give each of the --parallel slots its own GPUs")
  cloud = parser.add_argument_group("skypilot")
  cloud.add_argument("--accelerator", help="e.g. tpu-v5p-16 (a pod slice), H100:8")
  cloud.add_argument("--spot", action="store_true", help="spot/preemptible machines")
  cloud.add_argument("--infra", help="e.g. gcp, gcp/us-central1, aws, k8s (default: any)")
  cloud.add_argument("--max_restarts_on_errors", type=int, default=0,
                     help="relaunches after a failure (preemptions are always relaunched)")
  shared = parser.add_argument_group("skypilot and slurm")
  shared.add_argument("--num_nodes", type=int, default=1,
                      help="GPU nodes (a TPU pod slice is one node: its hosts come with it)")
  slurm = parser.add_argument_group("slurm")
  slurm.add_argument("--gpus_per_node", type=int, default=0, help="one task (process) per GPU")
  slurm.add_argument("--partition")
  slurm.add_argument("--account")
  slurm.add_argument("--cpus_per_task", type=int)
  slurm.add_argument("--time_min", type=int, default=24 * 60,
                     help="per job; submitit requeues it at the limit, and it resumes")
  args, rest = parser.parse_known_args(argv)
  bad = [a for a in rest if not a.startswith("--config.")]
  if bad:
    parser.error(f"unrecognized arguments: {' '.join(bad)}")
  args.common_flags = rest
  if args.parallel < 1 or args.gpus_per_run < 0:
    parser.error(f"--parallel {args.parallel} / --gpus_per_run {args.gpus_per_run}: need at "
                 "least one slot and no negative GPU count")
  if args.backend == "skypilot" and not args.accelerator:
    parser.error("--backend skypilot needs --accelerator (e.g. tpu-v5p-16 or H100:8)")
  return args


def planned_runs(args: argparse.Namespace, adapt=None) -> list[sweep.Run]:
  """The sweep's runs, each adapted to the backend (`adapt`, if given) and checked; raises
  ValueError naming the first bad one."""
  name, declared, runlocal = sweep.sweep_of(args.config, args.sweep)
  runs = sweep.expand(args.config, name, declared, args.root, runlocal, args.common_flags)
  if args.only:
    unknown = sorted(set(args.only) - {r.name for r in runs})
    if unknown:
      raise ValueError(f"--only {unknown}: not runs of sweep {name!r} "
                       f"({', '.join(r.name for r in runs)})")
    runs = [r for r in runs if r.name in args.only]
  runs = [adapt(run) for run in runs] if adapt else runs
  for run in runs:
    sweep.check(run)
  return runs


def main(argv: list[str] | None = None) -> int:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  sweep_name = [p for p in args.sweep.split(",") if p != sweep.RUNLOCAL][0]
  try:
    if args.backend == "local":
      from trm_jax.launch import local as backend
    elif args.backend == "skypilot":
      from trm_jax.launch import skypilot as backend
    else:
      from trm_jax.launch import slurm as backend
  except ModuleNotFoundError as error:
    print(f"error: --backend {args.backend} needs {error.name}: pip install 'trm_jax[launch]'",
          file=sys.stderr)
    return 2
  try:
    backend.check_root(args.root)
    runs = planned_runs(args, backend.with_local_data_dir if args.backend == "skypilot" else None)
    if args.backend == "local":
      if args.dry_run:
        print(backend.dry_run(runs, args.parallel, gpus_per_run=args.gpus_per_run))
        return 0
      codes = backend.launch(runs, args.parallel, gpus_per_run=args.gpus_per_run)
    elif args.backend == "skypilot":
      tasks = [backend.task_config(run, sweep_name, args.accelerator, args.num_nodes, args.spot,
                                   args.infra, args.max_restarts_on_errors) for run in runs]
      if args.dry_run:
        print(backend.dry_run(tasks))
        return 0
      codes = backend.launch(tasks)
    else:
      parameters = [backend.parameters_for(run, sweep_name, args.num_nodes, args.gpus_per_node,
                                           args.partition, args.time_min, args.cpus_per_task,
                                           args.account) for run in runs]
      if args.dry_run:
        print(backend.dry_run(runs, parameters))
        return 0
      backend.launch(runs, parameters)
      codes = []
  except (ValueError, FileNotFoundError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  failed = sum(code != 0 for code in codes)
  if failed:
    print(f"{failed} of {len(codes)} runs failed", file=sys.stderr)
  return 1 if failed else 0


if __name__ == "__main__":
  sys.exit(main())
