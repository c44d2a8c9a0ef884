"""`python -m trm_jax.launch`: the generated SkyPilot task YAMLs and SLURM (submitit) jobs read
back by the launchers' own code, exact dry-run output, and a local 2-run sweep that resumes."""

import json
import shutil
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from trm_jax import sweep
from trm_jax.launch import __main__ as launch_cli
from trm_jax.launch import local, skypilot, slurm

ROOT = pathlib.Path(__file__).resolve().parents[1]
SUDOKU = "experiments/sudoku.py"


@pytest.fixture
def repo_cwd(monkeypatch):
  monkeypatch.chdir(ROOT)  # the launcher runs from the checkout: config paths are relative to it


def smoke_runs(root, common_flags=()):
  name, runs, runlocal = sweep.sweep_of(SUDOKU, "smoke")
  return sweep.expand(SUDOKU, name, runs, root, runlocal, common_flags)


# ---------------------------------------------------------------------------------- skypilot --


def _read_task(tmp_path, task):
  sky = pytest.importorskip("sky")
  path = tmp_path / "task.yaml"
  path.write_text(skypilot.to_yaml(task))
  return sky.Task.from_yaml(str(path))


def test_skypilot_tpu_pod_slice_spot_task(tmp_path, repo_cwd):
  run = smoke_runs("gs://bucket/runs")[1]
  task = _read_task(tmp_path, skypilot.task_config(run, "smoke", "tpu-v5p-16", spot=True,
                                                   infra="gcp", max_restarts_on_errors=2))
  assert task.name == "trm-smoke-lr-0-001-seed-1"
  assert task.num_nodes == 1  # the pod slice's hosts come with the accelerator
  (resources,) = task.resources
  assert resources.accelerators == {"tpu-v5p-16": 1}
  assert resources.use_spot
  assert resources.job_recovery["max_restarts_on_errors"] == 2
  assert str(resources.cloud).lower() == "gcp"
  assert task.workdir == str(ROOT)
  assert task.setup == "bash launch/setup.sh tpu"
  assert task.envs == {}
  # Every host runs the same command; jax.distributed finds the slice by itself. The hosts
  # share no disk: each keeps (and builds) the TFDS data in a local folder.
  assert task.run.strip() == (
      "python3 -m trm_jax.main --config experiments/sudoku.py:smoke "
      "--workdir gs://bucket/runs/smoke/lr=0.001,seed=1 --config.train.lr=0.001 "
      "--config.train.seed=1 --config.data.data_dir=/tmp/trm_jax/tfds")
  with pytest.raises(ValueError, match="a TPU pod slice is one SkyPilot node"):
    skypilot.task_config(run, "smoke", "tpu-v5p-16", num_nodes=2)


def test_skypilot_multi_node_gpu_task_joins_processes(tmp_path, repo_cwd):
  run = smoke_runs("gs://bucket/runs")[0]
  task = _read_task(tmp_path, skypilot.task_config(run, "smoke", "H100:8", num_nodes=2))
  (resources,) = task.resources
  assert resources.accelerators == {"H100": 8} and not resources.use_spot
  assert task.num_nodes == 2 and task.setup == "bash launch/setup.sh cuda"
  assert task.envs == {"TRM_JAX_COORDINATOR_PORT": skypilot.COORDINATOR_PORT}
  # The run script on node 1 of 2, with SkyPilot's variables: python3 here echoes its argv.
  fake_bin = tmp_path / "bin"
  fake_bin.mkdir()
  (fake_bin / "python3").write_text('#!/bin/sh\nprintf "%s\\n" "$@"\n')
  (fake_bin / "python3").chmod(0o755)
  env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "SKYPILOT_NODE_IPS": "10.0.0.7\n10.0.0.8",
         "SKYPILOT_NUM_NODES": "2", "SKYPILOT_NODE_RANK": "1", **task.envs}
  argv = subprocess.run(["bash", "-c", task.run], env=env, capture_output=True, text=True,
                        check=True).stdout.splitlines()
  assert argv == run.argv("python3")[1:] + [
      "--config.data.data_dir=/tmp/trm_jax/tfds",  # each node's own (nodes share no disk)
      "--coordinator_address=10.0.0.7:8476", "--num_processes=2", "--process_id=1"]


def test_skypilot_dry_run_text(repo_cwd, capsys):
  code = launch_cli.main(["--config", SUDOKU, "--sweep", "smoke", "--root", "gs://b/runs",
                          "--backend", "skypilot", "--accelerator", "tpu-v5p-16", "--spot",
                          "--only", "lr=0.003,seed=2", "--dry_run",
                          "--config.data.manual_dir=gs://b/data",
                          "--config.data.data_dir=/mnt/shared/tfds"])
  assert code == 0
  assert capsys.readouterr().out == textwrap.dedent(f"""\
      # trm-smoke-lr-0-003-seed-2.yaml
      name: trm-smoke-lr-0-003-seed-2
      workdir: {ROOT}
      num_nodes: 1
      resources:
        accelerators: tpu-v5p-16
        use_spot: true
        job_recovery:
          max_restarts_on_errors: 0
      setup: bash launch/setup.sh tpu
      run: |
        python3 -m trm_jax.main --config experiments/sudoku.py:smoke --workdir gs://b/runs/smoke/lr=0.003,seed=2 --config.train.lr=0.003 --config.train.seed=2 --config.data.manual_dir=gs://b/data --config.data.data_dir=/mnt/shared/tfds
      # $ sky jobs launch --yes --detach-run --name trm-smoke-lr-0-003-seed-2 trm-smoke-lr-0-003-seed-2.yaml
      """)


def test_a_bucket_root_keeps_the_data_on_each_host(repo_cwd, capsys):
  """The TFDS data would default to ROOT/SWEEP/RUN/tfds, on the bucket, where array_record
  cannot write: each host gets a local folder instead, unless the user names one; one on a
  bucket is refused at launch, naming the field."""
  def run_line(*flags):
    code = launch_cli.main(["--config", SUDOKU, "--sweep", "smoke", "--backend", "skypilot",
                            "--accelerator", "tpu-v5p-16", "--only", "lr=0.003,seed=2",
                            "--dry_run", *flags])
    out, err = capsys.readouterr()
    return code, [l for l in out.splitlines() if "trm_jax.main" in l], err

  code, (line,), _ = run_line("--root", "gs://b/runs")
  assert code == 0 and line.endswith(" --config.data.data_dir=/tmp/trm_jax/tfds"), line
  code, (line,), _ = run_line("--root", "gs://b/runs", "--config.data.data_dir=/data/tfds")
  assert code == 0 and line.count("data_dir") == 1, line
  code, (line,), _ = run_line("--root", "/shared/runs")  # the workdir's tfds is on the mount
  assert code == 0 and "data_dir" not in line, line
  code, _, err = run_line("--root", "gs://b/runs", "--config.data.data_dir=gs://b/tfds")
  assert code == 2 and "config field 'data.data_dir' = 'gs://b/tfds'" in err, err


# ------------------------------------------------------------------------------------- slurm --


def _sbatch_options(script: str) -> dict[str, str]:
  lines = [l.removeprefix("#SBATCH --") for l in script.splitlines() if l.startswith("#SBATCH")]
  return dict(l.split("=", 1) for l in lines)


def test_slurm_job_through_submitit(tmp_path, monkeypatch, repo_cwd):
  """The real submitit submission, with `sbatch` / `srun` stand-ins that record the script."""
  submitit = pytest.importorskip("submitit")
  fake_bin = tmp_path / "bin"
  fake_bin.mkdir()
  (fake_bin / "srun").write_text("#!/bin/sh\n")
  (fake_bin / "sbatch").write_text(
      f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sh\necho "Submitted batch job 4242"\n')
  for tool in ("srun", "sbatch"):
    (fake_bin / tool).chmod(0o755)
  monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
  run = smoke_runs(str(tmp_path / "runs"))[3]
  parameters = slurm.parameters_for(run, "smoke", nodes=2, gpus_per_node=4, partition="gpu",
                                    timeout_min=600)
  dry = slurm.sbatch_script(run, parameters)
  assert slurm.launch([run], [parameters]) == ["4242"]
  script = (tmp_path / "submitted.sh").read_text()
  assert script == dry  # the dry run prints exactly what is submitted
  options = _sbatch_options(script)
  assert options["nodes"] == "2"
  assert options["ntasks-per-node"] == "4"  # one JAX process per GPU
  assert options["gpus-per-node"] == "4"
  assert options["partition"] == "gpu" and options["time"] == "600"
  assert options["job-name"] == "trm-smoke-lr=0.003,seed=0"
  assert options["signal"] == "USR2@180"  # submitit requeues; the run resumes
  assert options["output"] == f"{run.workdir}/slurm/%j/%j_0_log.out"
  assert "\nsrun " in script  # every task: srun sets the SLURM_* variables jax.distributed reads
  # What each task runs: submitit's pickle, read back by submitit.
  paths = submitit.core.utils.JobPaths(slurm.folder(run), job_id="4242")
  delayed = submitit.core.utils.DelayedSubmission.load(paths.submitted_pickle)
  assert isinstance(delayed.function, slurm.TrainingCommand)
  assert delayed.function.argv == run.argv(sys.executable)
  assert hasattr(delayed.function, "checkpoint")  # requeued on timeout / preemption


def test_slurm_training_command_outlives_the_warning_signal():
  """SLURM sends the warning signal (USR2) to every process of the job; the training process
  must keep going until the requeue's SIGTERM, on which it checkpoints."""
  pytest.importorskip("submitit")
  survives = [sys.executable, "-c",
              "import os, signal; os.kill(os.getpid(), signal.SIGUSR2); print('alive')"]
  slurm.TrainingCommand(survives)()  # raises CalledProcessError if USR2 killed it


def test_slurm_dry_run_needs_no_cluster(repo_cwd, capsys):
  code = launch_cli.main(["--config", SUDOKU, "--sweep", "smoke", "--root", "/shared/runs",
                          "--backend", "slurm", "--num_nodes", "2", "--gpus_per_node", "8",
                          "--only", "lr=0.001,seed=0", "--dry_run"])
  out = capsys.readouterr().out
  assert code == 0
  assert out.startswith("# lr=0.001,seed=0: sbatch script (submitit)\n#!/bin/bash\n")
  assert "#SBATCH --ntasks-per-node=8\n" in out and "#SBATCH --nodes=2\n" in out
  assert out.endswith(f"# each task runs: {sys.executable} -m trm_jax.main --config "
                      "experiments/sudoku.py:smoke --workdir /shared/runs/smoke/lr=0.001,seed=0 "
                      "--config.train.lr=0.001 --config.train.seed=0\n")


# ------------------------------------------------------------------------------------- local --


def test_local_dry_run_text(repo_cwd, capsys):
  assert launch_cli.main(["--config", SUDOKU, "--sweep", "smoke", "--root", "runs",
                          "--parallel", "3", "--dry_run", "--config.train.max_steps=3"]) == 0
  expected = ["# local: 6 runs, 3 at a time"] + [
      f"{sys.executable} -m trm_jax.main --config experiments/sudoku.py:smoke --workdir "
      f"runs/smoke/lr={lr},seed={s} --config.train.lr={lr} --config.train.seed={s} "
      f"--config.train.max_steps=3 >> runs/smoke/lr={lr},seed={s}/launch.log 2>&1"
      for lr in ("0.001", "0.003") for s in (0, 1, 2)]
  assert capsys.readouterr().out == "\n".join(expected) + "\n"
  assert not (ROOT / "runs" / "smoke").exists()


def test_local_slots_get_their_own_gpus(tmp_path, repo_cwd):
  """4 runs, 2 at a time, 2 GPUs each: a stand-in python records its CUDA_VISIBLE_DEVICES and
  holds its slot for a moment, so both slots are busy at once."""
  fake_python = tmp_path / "python"
  fake_python.write_text('#!/bin/sh\necho "gpus=$CUDA_VISIBLE_DEVICES"\nsleep 0.3\n')
  fake_python.chmod(0o755)
  runs = smoke_runs(str(tmp_path / "runs"))[:4]
  assert local.launch(runs, parallel=2, python=str(fake_python), gpus_per_run=2) == [0] * 4
  seen = [(pathlib.Path(r.workdir) / local.LOG_FILE).read_text().strip() for r in runs]
  assert set(seen) == {"gpus=0,1", "gpus=2,3"}
  assert seen[0] != seen[1]  # the first two ran side by side, on different GPUs
  assert local.dry_run(runs[:1], 2, "python", gpus_per_run=2).splitlines()[:3] == [
      "# local: 1 runs, 2 at a time", "# slot 0: CUDA_VISIBLE_DEVICES=0,1",
      "# slot 1: CUDA_VISIBLE_DEVICES=2,3"]


TINY_EXPERIMENT = """
import sys
sys.path.insert(0, {experiments!r})
import sudoku
from trm_jax import sweep


def get_config(arg=None):  # the smoke run on 4x4 Sudoku, 64 train / 16 test puzzles
  config = sudoku.get_config("smoke,runlocal")
  config.data.generate.size = config.data.builder_config.size = 4
  config.data.builder_config.name = "generated_4x4"
  config.data.generate.num_train, config.data.generate.num_test = 64, 16
  config.model.H_cycles = config.model.L_cycles = 1
  config.model.halt_max_steps = 2
  return config


def get_sweep(name):
  return {{"seeds": sweep.axis("train.seed", [0, 1]),
           "second_bad": sweep.axis("train.log_every_steps", [1, 0])}}[name]
"""


def _train_lines(workdir):
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  return [l["step"] for l in lines if l["kind"] == "train"]


def _checkpoints(workdir):
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_local_sweep_runs_and_resumes(tmp_path, repo_cwd):
  experiment = tmp_path / "tiny.py"
  experiment.write_text(TINY_EXPERIMENT.format(experiments=str(ROOT / "experiments")))
  root = tmp_path / "runs"
  args = ["--config", str(experiment), "--sweep", "seeds", "--root", str(root),
          "--parallel", "2", "--config.train.log_every_steps=1", "--config.eval.max_batches=1",
          "--config.train.epochs=20", "--config.train.eval_interval=20",  # max_steps decides
          "--config.train.max_steps=5", "--config.train.checkpoint_every_steps=3"]
  assert launch_cli.main(args) == 0
  workdirs = [root / "seeds" / "seed=0", root / "seeds" / "seed=1"]
  for workdir in workdirs:
    assert _train_lines(workdir) == [1, 2, 3, 4, 5]
    assert _checkpoints(workdir) == [3, 5]
    assert (workdir / "eval_table.txt").is_file()
    assert "exact_accuracy:" in (workdir / local.LOG_FILE).read_text()  # the run's own output
    shutil.rmtree(workdir / "checkpoints" / "5")  # as if preempted before its last save
  assert json.loads((workdirs[1] / "config.json").read_text())["train"]["seed"] == 1
  # Launched again, the same command: each run continues from its checkpoint, same workdir,
  # one metrics record per step.
  assert launch_cli.main(args) == 0
  for workdir in workdirs:
    assert "resumed from checkpoint step 3" in (workdir / local.LOG_FILE).read_text()
    assert _train_lines(workdir) == [1, 2, 3, 4, 5]
    assert _checkpoints(workdir) == [3, 5]


def test_nothing_launches_when_a_run_is_bad(tmp_path, repo_cwd, capsys):
  experiment = tmp_path / "tiny.py"
  experiment.write_text(TINY_EXPERIMENT.format(experiments=str(ROOT / "experiments")))
  root = tmp_path / "runs"
  base = ["--config", str(experiment), "--root", str(root)]
  assert launch_cli.main(base + ["--sweep", "second_bad"]) == 2
  assert "run 'log_every_steps=0': config field 'train.log_every_steps' = 0" in (
      capsys.readouterr().err)
  assert launch_cli.main(base + ["--sweep", "seeds", "--config.train.max_stepz=3"]) == 2
  assert "unknown override key 'train.max_stepz'" in capsys.readouterr().err
  assert launch_cli.main(["--config", "experiments/maze.py", "--sweep", "x", "--root",
                          str(root)]) == 2
  assert "experiments/maze.py has no get_sweep" in capsys.readouterr().err
  assert not root.exists()  # not even the first, good run started


def test_roots_each_backend_needs():
  with pytest.raises(ValueError, match="local directory"):
    local.check_root("gs://b/runs")
  with pytest.raises(ValueError, match="give a bucket"):
    skypilot.check_root("runs")
  skypilot.check_root("gs://b/runs")
  with pytest.raises(ValueError, match="shared filesystem"):
    slurm.check_root("runs")
