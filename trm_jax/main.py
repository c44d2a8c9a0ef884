r"""Train and evaluate a TRM from an experiment config.

    python -m trm_jax.main --config experiments/sudoku.py:smoke --workdir /tmp/smoke
    python -m trm_jax.main --config experiments/sudoku.py:mlp --workdir DIR \
        --config.data.manual_dir=data/sudoku-extreme --config.train.epochs=1000

Prints (process 0 only) a short header (workdir, devices, mesh, parameters, data, steps), a
progress bar (steps/s, ETA, loss, exact accuracy, examples/s), one line per evaluation and per
checkpoint saved or restored, and the final evaluation table. Libraries' INFO logs (Orbax, TFDS,
JAX) are off: `--verbosity=0` shows them, `--verbosity=1` adds DEBUG; warnings and errors always
show.

Writes to the workdir: config.json (the resolved config), metrics.jsonl (one JSON object per
logged step and per evaluation, with throughput: see trm_jax/metrics.py), TensorBoard event
files under tb/, eval_table.txt, plots/*.png (trm_jax/plot.py), and with train.profile_steps
jax.profiler traces of those steps under profile/ (trm_jax/profiling.py). The workdir may be a
bucket (gs://BUCKET/runs/x, with the `gcs` extra: trm_jax/paths.py), and so may
data.manual_dir; the TFDS data (data.data_dir, by default <workdir>/tfds) must then be given
a local directory: array_record files are local-only (`datasets.check_data_dir`). On several
hosts, each process builds the dataset into its own data.data_dir when it is not there (a pod's
hosts need no shared disk; a shared one works too), and all check that they read the same data
before training (`datasets.prepare_on_every_host`).

Run again with the same --workdir to resume from its newest checkpoint. A resume with a config
that differs from the workdir's config.json is refused, naming the fields, unless
--allow_config_change is given; then the change is appended to config_changes.jsonl. Where the
run executes (mesh_shape), how it keeps checkpoints, and where the workdir is (the data folders
that default to it) may change freely.
"""

from __future__ import annotations

import os

from trm_jax import host_memory

# Before JAX starts its backend: see trm_jax/host_memory.py.
_HOST_MALLOC = host_memory.configure(os.environ.get("TRM_JAX_HOST_MALLOC", "auto"),
                                    source="environment variable TRM_JAX_HOST_MALLOC")

import functools
import json
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from trm_jax import checkpoint as checkpoint_lib
from trm_jax import console as console_lib
from trm_jax import flops as flops_lib
from trm_jax import inference
from trm_jax import metrics as metrics_lib
from trm_jax import model as model_lib
from trm_jax import multihost
from trm_jax import paths
from trm_jax import profiling
from trm_jax import runs as runs_lib
from trm_jax import sharding as sharding_lib
from trm_jax import steps as steps_lib
from trm_jax import train as train_lib
from trm_jax.config import ModelSpec
from trm_jax.data import datasets, pipeline

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:variant]",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory")
_EVAL_ONLY = flags.DEFINE_bool("eval_only", False, "evaluate the newest checkpoint in the "
                               "workdir (or --checkpoint_dir) and exit, without training")
_CHECKPOINT_DIR = flags.DEFINE_string("checkpoint_dir", None, "with --eval_only: a checkpoints "
                                      "directory of another run")
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change", False, "resume the workdir's run even though the config differs "
    "from its config.json; the change is recorded in config_changes.jsonl")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "multi-process without a "
                                   "detectable cluster: host:port of process 0")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "with --coordinator_address")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "with --coordinator_address")


# ------------------------------------------------------------------------------------ config --

OPTIMIZERS = ("adam_atan2", "adamw")


def validate_experiment(cfg: ml_collections.ConfigDict) -> None:
  """Checks the training and evaluation fields; raises ValueError naming the field."""
  def fail(field, why):
    section, name = field.split(".")
    raise ValueError(f"config field '{field}' = {cfg[section][name]!r}: {why}")

  positive_ints = ["train.global_batch_size", "train.epochs", "train.eval_interval",
                   "eval.global_batch_size", "train.log_every_steps"]
  for field in positive_ints:
    section, name = field.split(".")
    value = cfg[section][name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      fail(field, "must be a positive integer")
  for field in ["train.lr", "train.puzzle_emb_lr"]:
    section, name = field.split(".")
    if not cfg[section][name] > 0:
      fail(field, "must be positive")
  for field in ["train.weight_decay", "train.puzzle_emb_weight_decay", "train.grad_clip_norm",
                "train.lr_warmup_steps", "train.checkpoint_every_steps",
                "train.keep_best_checkpoints"]:
    section, name = field.split(".")
    if cfg[section][name] < 0:
      fail(field, "must be non-negative")
  for field in ["train.beta1", "train.beta2", "train.ema_rate", "train.lr_min_ratio"]:
    section, name = field.split(".")
    if not 0 <= cfg[section][name] <= 1:
      fail(field, "must be in [0, 1]")
  if cfg.train.keep_checkpoints < 1:
    fail("train.keep_checkpoints", "must be at least 1")
  if cfg.train.get("optimizer", "adam_atan2") not in OPTIMIZERS:
    fail("train.optimizer", f"must be one of {OPTIMIZERS}")
  max_steps = cfg.train.get("max_steps", 0)
  if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 0:
    fail("train.max_steps", "must be a non-negative integer (0: train.epochs decides)")
  if cfg.train.eval_interval > cfg.train.epochs:
    fail("train.eval_interval", f"exceeds train.epochs={cfg.train.epochs}")
  profile_steps = cfg.train.get("profile_steps", ())
  if not isinstance(profile_steps, (list, tuple)) or not all(
      isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in profile_steps):
    fail("train.profile_steps", "must be a list of training steps (positive integers)")
  inference.Strategy.from_config(cfg.eval)


def check_batches_fit(cfg: ml_collections.ConfigDict, mesh) -> None:
  """Training and evaluation batches are split over every device of the mesh and every
  process: each global batch size must divide evenly (checked before anything compiles)."""
  devices, processes = mesh.devices.size, jax.process_count()
  for field in ("train.global_batch_size", "eval.global_batch_size"):
    section, name = field.split(".")
    value = cfg[section][name]
    if value % devices or value % processes:
      raise ValueError(f"config field '{field}' = {value}: must be a multiple of the mesh's "
                       f"{devices} devices and of the {processes} processes (batches are "
                       "split over both)")


# Model fields the dataset sets (its metadata holds them under the same names).
DATA_SHAPE_FIELDS = ("seq_len", "vocab_size", "num_puzzle_identifiers")
# How a run executes, not what it trains: a resume may change these without --allow_config_change
# (where a host keeps its built dataset too: every host checks that all read the same data).
EXECUTION_FIELDS = ("mesh_shape", "train.checkpoint_every_steps", "train.keep_checkpoints",
                    "train.keep_best_checkpoints", "train.profile_steps", "data.data_dir")


def model_config_for(cfg: ml_collections.ConfigDict, metadata: dict[str, Any]):
  """The experiment's model config with the dataset's shapes filled in (the puzzle table
  rounded up so that the mesh can split it: `sharding.table_rows`)."""
  model_cfg = ml_collections.ConfigDict(cfg.model.to_dict())
  for name in DATA_SHAPE_FIELDS:
    model_cfg[name] = int(metadata[name])
  model_cfg.num_puzzle_identifiers = sharding_lib.table_rows(model_cfg.num_puzzle_identifiers)
  ModelSpec.from_config(model_cfg)
  return model_cfg


def data_folders(cfg: ml_collections.ConfigDict, workdir: str) -> tuple[str, ...]:
  """Sets the data folders left empty to folders of the workdir: data.data_dir to
  <workdir>/tfds and, for generated data, data.manual_dir to <workdir>/raw; returns the fields
  it set. Raises ValueError naming data.data_dir where TFDS cannot keep a dataset (a bucket:
  `datasets.check_data_dir`)."""
  in_workdir = ()
  workdir_path = epath.Path(workdir)
  if not cfg.data.data_dir:
    cfg.data.data_dir = str(workdir_path / "tfds")
    in_workdir += ("data.data_dir",)
  if cfg.data.get("generate") and cfg.data.generate.get("kind") and not cfg.data.manual_dir:
    cfg.data.manual_dir = str(workdir_path / "raw")
    in_workdir += ("data.manual_dir",)
  datasets.check_data_dir(cfg.data, defaulted="data.data_dir" in in_workdir)
  return in_workdir


class ConfigChangeError(ValueError):
  """A resume whose config differs from the run's config.json, without --allow_config_change."""


def config_changes_on_resume(cfg: ml_collections.ConfigDict, workdir: epath.Path,
                             checkpoint_dir: epath.Path, allow: bool,
                             in_workdir: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
  """The fields `cfg` would change in the run it resumes ({} when there is no checkpoint to
  resume). Raises ConfigChangeError naming them unless `allow` or they are EXECUTION_FIELDS.

  Compared before the data is opened: the dataset's shapes in config.json are taken as they
  are, since the data fields that decide them are compared themselves. `in_workdir`: fields
  that default to a folder of the workdir (data.data_dir, data.manual_dir); they follow the
  workdir when it is moved or copied, so they are not compared.
  """
  config_path = workdir / runs_lib.CONFIG_FILE
  steps = runs_lib.checkpoint_steps(checkpoint_dir)
  if not steps or not config_path.exists():
    return {}
  old = json.loads(config_path.read_text())
  new = json.loads(json.dumps(cfg.to_dict(), default=str))
  for name in DATA_SHAPE_FIELDS:
    if name in old.get("model", {}):
      new["model"][name] = old["model"][name]
  differences = {field: change for field, change in runs_lib.config_differences(old, new).items()
                 if field not in in_workdir}
  refused = {field: change for field, change in differences.items()
             if field not in EXECUTION_FIELDS}
  if refused and not allow:
    listing = "\n".join(f"  {field}: {old_value!r} -> {new_value!r}"
                         for field, (old_value, new_value) in refused.items())
    raise ConfigChangeError(
        f"{workdir} holds a run with checkpoints up to step {steps[-1]} whose config.json "
        f"differs from this config in {len(refused)} field(s) (config.json -> now):\n{listing}\n"
        "Resuming would train one run under two configs. Use another --workdir, give the "
        "run's own values, or pass --allow_config_change to continue with the new ones "
        f"(recorded in {workdir / runs_lib.CONFIG_CHANGES_FILE}).")
  return differences


# ----------------------------------------------------------------------------------- logging --


def reduce_train_metrics(sums: dict[str, np.ndarray], global_batch: int) -> dict[str, float]:
  """Official reduction: losses and `target_*` metrics (every row, every step) per example of
  the batch, the rest per halted example."""
  count = max(float(sums["count"]), 1.0)
  out = {}
  for name, value in sums.items():
    if name in ("lr", "grad_norm"):
      out[name] = float(value)
    elif name == "count":
      out[name] = float(value)
    elif name.endswith("loss") or name.startswith("target_"):
      out[name] = float(value) / global_batch
    else:
      out[name] = float(value) / count
  return out


# ------------------------------------------------------------------------------------ evals --


ARC_KEYS = ("task_id", "test_index", "dihedral", "colors")


def arc_evaluator_for(cfg: ml_collections.ConfigDict, split: str = "test"):
  """An ARC pass@K evaluator over the tasks of `split` (None for other datasets): the test
  set's, or the training tasks held out as validation (`arc.validation_task_ids`)."""
  if cfg.data.builder != "arc":
    return None
  from trm_jax.data import arc, arc_eval
  builder_cfg = cfg.data.builder_config
  test_set, prefix = builder_cfg.test_set_name, builder_cfg.get("prefix", "arc-agi")
  if split == "test":
    tasks = arc.load_subsets(cfg.data.manual_dir, [test_set], prefix)[test_set]
  else:
    subsets = arc.load_subsets(cfg.data.manual_dir, builder_cfg.subsets, prefix)
    tasks = {task_id: subsets[subset][task_id] for subset, task_id in arc.validation_task_ids(
        subsets, test_set, builder_cfg.validation_fraction, builder_cfg.get("validation_seed", 0))}
  return arc_eval.ArcEvaluator(tasks, pass_ks=tuple(cfg.eval.pass_ks))


def evaluation_split(cfg: ml_collections.ConfigDict, data: datasets.Prepared) -> str:
  """The split that periodic evaluations (and keep_best) read: validation where the dataset
  has one, else test (as the official code does). Raises ValueError naming
  train.keep_best_checkpoints when it would rank checkpoints by test accuracy."""
  if data.validation is not None:
    return "validation"
  if cfg.train.keep_best_checkpoints:
    raise ValueError(
        f"config field 'train.keep_best_checkpoints' = {cfg.train.keep_best_checkpoints} keeps "
        f"the checkpoints with the best validation accuracy, but the dataset "
        f"{cfg.data.builder}/{cfg.data.builder_config.get('name', '')} has no validation split: "
        "hold out training puzzles (--config.data.builder_config.validation_fraction=F) or set "
        "it to 0 (choosing checkpoints by test accuracy would overstate it)")
  return "test"


def report_eval(result: dict[str, Any], path: epath.Path,
                console: console_lib.Console) -> None:
  """Process 0 prints the evaluation table and writes it to `path`."""
  table = format_eval_table(result)
  if jax.process_index() == 0:
    path.write_text(table + "\n")
  console.line(table)


def is_eval_step(step: int, eval_every: int, total_steps: int) -> bool:
  """Every `eval_every` steps and at the last step; a periodic evaluation that rounding of the
  steps per epoch would put within half an interval of the end is left to the final one."""
  return step == total_steps or (step % eval_every == 0 and total_steps - step >= eval_every / 2)


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


# Per-row results of `inference.eval_batch` with the batch on their last axis.
_STEP_MAJOR = ("token_acc", "exact")


def gather_rows(out: dict[str, jax.Array]) -> dict[str, np.ndarray]:
  """Per-row results, split over the mesh (and processes), as host arrays on every process,
  rows sorted by their record `index` (so the order is the stream's, whatever the mesh)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    host = multihost_utils.process_allgather(out, tiled=True)
  else:
    host = jax.device_get(out)
  order = np.argsort(np.asarray(host["index"]), kind="stable")
  return {k: np.take(np.asarray(v), order, axis=-1 if k in _STEP_MAJOR else 0)
          for k, v in host.items()}


def compile_evaluation(spec: ModelSpec, strategy: inference.Strategy, params, test_source,
                       cfg, mesh):
  """The evaluation batch (`steps.eval_step`) compiled for the sharded eval batches `evaluate`
  gives it."""
  local = next(pipeline.eval_batches(test_source, global_batch_size=cfg.eval.global_batch_size,
                                     process_index=jax.process_index(),
                                     process_count=jax.process_count()))
  rows = sharding_lib.global_batch(mesh, {k: local[k] for k in pipeline.MODEL_KEYS})
  return steps_lib.eval_step(spec, strategy, mesh, params, rows).compile()


def evaluate(evaluate_batch, params, test_source, cfg, spec: ModelSpec, mesh,
             arc_evaluator=None, strategy: inference.Strategy = inference.Strategy(),
             split: str = "test") -> dict[str, Any]:
  """Exact and token accuracy after each supervision step, forward passes per example, and
  (ARC) pass@K over this evaluation's predictions only. `evaluate_batch` is
  `inference.eval_batch` with `strategy` (config section `eval`) bound, jitted or compiled.

  Data-parallel like training: each process reads its rows of every global batch, the batch is
  one global array split over the mesh's batch axes (each device computes 1/N of the rows),
  and only the per-row results come back, gathered to every process and put in record order,
  so the sums and the ARC vote see every prediction once, in the same order on any mesh.
  """
  n_sup = strategy.steps(spec)
  token, exact, steps, cost, count = np.zeros(n_sup), np.zeros(n_sup), 0.0, 0.0, 0
  final_exact = 0.0
  max_batches = cfg.eval.max_batches
  if arc_evaluator is not None:
    arc_evaluator.reset()
  keys = ARC_KEYS if arc_evaluator is not None else ()
  # Task ids (text) travel as their position in the evaluator's task list.
  task_ids = list(arc_evaluator.tasks) if arc_evaluator is not None else []
  task_number = {task_id: i for i, task_id in enumerate(task_ids)}
  batches = pipeline.eval_batches(test_source, global_batch_size=cfg.eval.global_batch_size,
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count(), keys=keys)
  for i, local in enumerate(batches):
    if max_batches and i >= max_batches:
      break
    if arc_evaluator is not None:
      local["task_id"] = np.asarray([task_number.get(_text(t), -1) for t in local["task_id"]],
                                    np.int32)
    rows = sharding_lib.global_batch(mesh, local)
    out = evaluate_batch(params, {k: rows[k] for k in pipeline.MODEL_KEYS})
    out = gather_rows({**out, **{k: rows[k] for k in ("index", "valid", *keys)}})
    valid = out["valid"]
    token += (out["token_acc"] * valid).sum(-1)
    exact += (out["exact"] * valid).sum(-1)
    halting_step = out["steps"] - 1
    final_exact += float((out["exact"][halting_step, np.arange(len(valid))] * valid).sum())
    steps += float((out["steps"] * valid).sum())
    cost += float((out["cost_steps"] * valid).sum())  # every rollout's steps
    count += int(valid.sum())
    if arc_evaluator is not None:
      names = [task_ids[t] if t >= 0 else "<not in the evaluation tasks>" for t in out["task_id"]]
      arc_evaluator.add(out["preds"], out["q_halt"], names, out["test_index"], out["dihedral"],
                        out["colors"], mask=valid)
  passes = strategy.passes_per_step(spec)
  result = {
      "count": count,
      "exact_accuracy": final_exact / max(count, 1),
      "accuracy_per_step": (token / max(count, 1)).tolist(),
      "exact_accuracy_per_step": (exact / max(count, 1)).tolist(),
      "steps": steps / max(count, 1),
      "forward_passes_per_example": passes * cost / max(count, 1),
      "strategy": strategy.describe(),
      "split": split,
  }
  if arc_evaluator is not None:
    result.update(arc_evaluator.result())
  return result


def format_eval_table(result: dict[str, Any]) -> str:
  lines = ["| supervision step | token accuracy | exact accuracy |", "|---|---|---|"]
  for k, (tok, ex) in enumerate(zip(result["accuracy_per_step"],
                                    result["exact_accuracy_per_step"]), start=1):
    lines.append(f"| {k} | {tok:.4f} | {ex:.4f} |")
  lines.append("")
  lines.append(f"{result.get('split', 'test')} examples: {result['count']}")
  lines.append(f"exact_accuracy: {result['exact_accuracy']:.4f}")
  lines.append(f"supervision steps per example: {result['steps']:.2f}")
  lines.append(f"forward passes per example: {result['forward_passes_per_example']:.1f}"
               + (f" ({result['strategy']})" if "strategy" in result else ""))
  for name, value in result.items():
    if name.startswith("pass@"):
      lines.append(f"{name}: {value:.4f}")
  return "\n".join(lines)


# -------------------------------------------------------------------------------------- main --


class _TerminationFlag:
  """SIGTERM (a preemption notice) asks the loop to save a checkpoint and exit cleanly."""

  def __init__(self):
    self.requested = False
    try:
      signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread (e.g. called from a test runner thread)
      pass

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True



def run_header(workdir_path, mesh, spec: ModelSpec, trainable, puzzle_table, cfg, data,
               data_seconds: float) -> list[tuple[str, str]]:
  """The header lines every run starts with: where, on what, which model, which data."""
  device = jax.devices()[0]
  kind = (device.device_kind if device.device_kind.lower() == device.platform
          else f"{device.device_kind} ({device.platform})")
  processes = f" over {jax.process_count()} processes" if jax.process_count() > 1 else ""
  table = f" (+{puzzle_table.size:,} in the puzzle table)" if puzzle_table is not None else ""
  return [
      ("workdir", str(paths.absolute(workdir_path))),
      ("devices", f"{jax.device_count()} x {kind}{processes}"),
      ("mesh", ", ".join(f"{axis}={size}" for axis, size in mesh.shape.items())),
      ("model", f"{spec.scheme}, {model_lib.count_params(trainable):,} parameters{table}, up "
                f"to {spec.halt_max_steps} supervision steps of "
                f"{model_lib.forward_passes_per_step(spec)} forward passes"),
      ("data", f"{cfg.data.builder}/{cfg.data.builder_config.name}: "
               f"{data.train_index.num_records:,} train records "
               f"({data.train_index.epoch_length:,} per epoch), "
               + (f"{len(data.validation):,} validation, " if data.validation is not None else "")
               + f"{len(data.test):,} test; "
               f"ready in {data_seconds:.1f}s"),
  ]


def evaluate_checkpoint(cfg, data, mesh, checkpoint_path: epath.Path,
                        workdir_path: epath.Path, console: console_lib.Console,
                        data_seconds: float) -> dict[str, Any]:
  """--eval_only: the newest checkpoint's evaluation weights, with the model config saved in
  it, evaluated on this config's test data with this config's `eval` strategy. Only the
  weights are read (`trm_jax.load`): no optimiser, training stream or carry, so a run can be
  evaluated on other puzzles of the same shapes."""
  run = runs_lib.load(checkpoint_path, mesh=mesh)
  model_cfg = run.model_config
  for name in DATA_SHAPE_FIELDS:
    have, need = int(model_cfg[name]), int(data.metadata[name])
    fits = need <= have if name == "num_puzzle_identifiers" else need == have
    if not fits:
      raise ValueError(f"--eval_only: the test data ({cfg.data.builder}/"
                       f"{cfg.data.builder_config.name}) has {name} = {need}, the model of "
                       f"{run.checkpoint} was trained with {have}")
  spec = ModelSpec.from_config(model_cfg)
  strategy = inference.Strategy.from_config(cfg.eval)
  strategy.validate(spec)
  trainable, table, _ = train_lib.split_params(spec, run.params)
  header = run_header(workdir_path, mesh, spec, trainable, table, cfg, data, data_seconds)
  console.header(header + [("checkpoint", f"step {run.step} of {run.checkpoint.parent}")])
  evaluate_batch = compile_evaluation(spec, strategy, run.params, data.test, cfg, mesh)
  result = evaluate(evaluate_batch, run.params, data.test, cfg, spec, mesh,
                    arc_evaluator_for(cfg), strategy)
  console.line(f"evaluated checkpoint step {run.step}")
  report_eval(result, workdir_path / f"eval_table_step{run.step}.txt", console)
  return result


def run(cfg: ml_collections.ConfigDict, workdir: str, *, eval_only: bool = False,
        checkpoint_dir: str | None = None, allow_config_change: bool = False
        ) -> dict[str, Any]:
  """The whole experiment; returns the final evaluation (or None when stopped by SIGTERM).

  `eval_only`: restore the newest checkpoint (of `checkpoint_dir`, default the workdir's) and
  evaluate it, without training (the evaluation settings may differ from the run's).
  `allow_config_change`: resume even when `cfg` differs from the workdir's config.json.
  """
  validate_experiment(cfg)
  # Shapes are filled in from the data later; fields (and the eval strategy) checked now.
  inference.Strategy.from_config(cfg.eval).validate(ModelSpec.from_config(cfg.model))
  console = console_lib.Console()
  workdir_path = epath.Path(workdir)
  in_workdir = data_folders(cfg, workdir)
  workdir_path.mkdir(parents=True, exist_ok=True)
  checkpoint_path = epath.Path(checkpoint_dir) if checkpoint_dir else workdir_path / "checkpoints"
  # Before anything is built or compiled (every process reads config.json before process 0
  # rewrites it, which it does after the processes compared their data).
  config_changes = {} if eval_only else config_changes_on_resume(
      cfg, workdir_path, checkpoint_path, allow_config_change, in_workdir)

  # --- Input (every process builds the dataset where it is not yet; all check they agree).
  start = time.time()
  with console_lib.library_output():
    data = datasets.prepare_on_every_host(cfg.data)
  data_seconds = time.time() - start
  model_cfg = model_config_for(cfg, data.metadata)
  spec = ModelSpec.from_config(model_cfg)
  strategy = inference.Strategy.from_config(cfg.eval)
  global_batch = cfg.train.global_batch_size
  steps_per_epoch = data.train_index.epoch_length / global_batch
  total_steps = max(1, int(cfg.train.epochs * steps_per_epoch))
  if cfg.train.get("max_steps", 0):
    total_steps = min(total_steps, cfg.train.max_steps)
  eval_every = max(1, int(cfg.train.eval_interval * steps_per_epoch))
  save_every = cfg.train.checkpoint_every_steps or eval_every

  # --- Mesh, model and state.
  mesh = sharding_lib.make_mesh(tuple(cfg.mesh_shape))
  check_batches_fit(cfg, mesh)
  jax.set_mesh(mesh)
  if eval_only:
    return evaluate_checkpoint(cfg, data, mesh, checkpoint_path, workdir_path, console,
                               data_seconds)
  split = evaluation_split(cfg, data)  # what periodic evaluations read; test is read once
  eval_source = data.validation if split == "validation" else data.test
  train_iter = iter(pipeline.train_dataset(
      data.train, data.train_index, seed=cfg.train.seed, global_batch_size=global_batch,
      num_epochs=cfg.train.epochs + 1, process_index=jax.process_index(),
      process_count=jax.process_count()))
  start_position = pipeline.stream_position(train_iter, jax.process_count())
  example = next(train_iter)  # shapes only; the stream is rewound (or restored) below
  state = train_lib.init_state(model_cfg, cfg.train,
                               sharding_lib.global_batch(mesh, example),
                               total_steps, jax.random.key(cfg.train.seed))
  state_shardings = sharding_lib.tree_shardings(mesh, state)
  state = jax.device_put(state, state_shardings)
  passes_per_step = model_lib.forward_passes_per_step(spec)
  device = jax.devices()[0]
  header = run_header(workdir_path, mesh, spec, state["trainable"], state.get("puzzle_emb"),
                      cfg, data, data_seconds)
  header.append(("training", f"{total_steps:,} steps of {global_batch} examples, evaluation "
                             f"every {eval_every:,} steps, checkpoint every {save_every:,}"))
  console.header(header)

  # --- Checkpoints: resume from the newest good one in the workdir.
  resolved = cfg.to_dict()  # the run's config: config.json and every checkpoint hold it
  resolved["model"] = model_cfg.to_dict()
  checkpoints = checkpoint_lib.CheckpointManager(
      checkpoint_path, save_interval_steps=save_every, keep=cfg.train.keep_checkpoints,
      keep_best=cfg.train.keep_best_checkpoints, config=resolved)
  restored = checkpoints.restore_latest(state, {"data_iterator": start_position})
  first_step = 1
  if restored is not None:
    last_step, state, loop_state = restored
    pipeline.seek(train_iter, loop_state["data_iterator"], jax.process_count())
    first_step = last_step + 1
    console.line(f"resumed from checkpoint step {last_step} in {checkpoints.directory}")
  else:
    pipeline.seek(train_iter, start_position, jax.process_count())
  if jax.process_index() == 0:
    (workdir_path / runs_lib.CONFIG_FILE).write_text(json.dumps(resolved, indent=1, default=str))
    runs_lib.record_provenance(workdir_path, first_step - 1)
    if config_changes:
      runs_lib.record_config_change(workdir_path, first_step - 1, config_changes)
      console.line(f"config changed at step {first_step - 1}: "
                   + ", ".join(f"{field} {old!r} -> {new!r}"
                               for field, (old, new) in config_changes.items()))

  # --- Compile (before the loop, so that neither throughput nor evaluation times hold it).
  start_compile = time.time()
  train_step = steps_lib.train_step(spec, cfg.train, total_steps, mesh, state,
                                    sharding_lib.global_batch(mesh, example)).compile()
  evaluate_batch = compile_evaluation(spec, strategy, train_lib.eval_params(state), data.test,
                                      cfg, mesh)
  console.line(f"compiled in {time.time() - start_compile:.1f}s")
  arc_evaluator = arc_evaluator_for(cfg, split)

  # --- Loop.
  writer = metrics_lib.MetricWriter(workdir_path, resume_step=first_step - 1)
  throughput = metrics_lib.Throughput(
      global_batch, passes_per_step,
      *mfu_inputs(device, jax.device_count(), spec, cfg.train, total_steps, state,
                  sharding_lib.global_batch(mesh, example)))
  terminate = _TerminationFlag()
  pending, window_steps = None, 0
  result = None
  tracer = profiling.StepTracer(cfg.train.get("profile_steps", ()), workdir_path / "profile",
                                total_steps)
  with console.progress(total=total_steps, initial=first_step - 1) as bar, tracer:
    for step in range(first_step, total_steps + 1):
      batch = next(train_iter)
      tracer.begin(step)
      state, metrics = train_step(state, sharding_lib.global_batch(mesh, batch))
      throughput.exclude(tracer.end(step, state))
      pending = metrics if pending is None else jax.tree.map(jnp.add, pending, metrics)
      window_steps += 1
      if step % cfg.train.log_every_steps == 0 or step == total_steps:
        sums = jax.device_get(pending)
        sums["lr"], sums["grad_norm"] = metrics["lr"], metrics["grad_norm"]
        if not all(np.isfinite(v) for v in jax.tree.leaves(sums)):
          bad = sorted(k for k, v in sums.items() if not np.isfinite(v))
          raise FloatingPointError(f"non-finite {bad} at step {step}; stopping (last good "
                                   f"metrics are in {workdir_path / 'metrics.jsonl'})")
        # Per example of the window's batches (fewer than log_every_steps after a resume).
        reduced = reduce_train_metrics(sums, global_batch * window_steps)
        reduced["count"] = float(sums["count"])
        if "steps" in reduced:  # measured: supervision steps of the examples that finished
          reduced["forward_passes_per_example"] = reduced["steps"] * passes_per_step
        reduced.update(throughput.window(window_steps))
        writer.write(step, "train", reduced)
        bar.set_postfix({"loss": f"{reduced['lm_loss']:.3f}",
                         "exact": f"{reduced['exact_accuracy']:.3f}",
                         "examples/s": f"{reduced['examples_per_s']:.0f}"}, refresh=False)
        pending, window_steps = None, 0
      eval_metrics = None
      if is_eval_step(step, eval_every, total_steps):
        jax.block_until_ready(state)  # the queued train steps are training time
        eval_start = time.time()
        result = evaluate(evaluate_batch, train_lib.eval_params(state), eval_source, cfg, spec,
                          mesh, arc_evaluator, strategy, split)
        eval_seconds = time.time() - eval_start
        throughput.exclude(eval_seconds)
        scalars = {k: v for k, v in result.items() if isinstance(v, float)}
        scalars.update({f"exact_accuracy_step{k + 1}": v
                        for k, v in enumerate(result["exact_accuracy_per_step"])})
        eval_metrics = {k.replace("@", "_at_"): v for k, v in scalars.items()}
        writer.write(step, "eval", {**eval_metrics, "seconds": eval_seconds}, split=split)
        console.line(f"step {step}: {split} exact_accuracy {result['exact_accuracy']:.4f} "
                     f"({eval_seconds:.1f}s)")
      position = pipeline.stream_position(train_iter, jax.process_count())
      saved = checkpoints.maybe_save(step, state, {"data_iterator": position},
                                     force=terminate.requested or step == total_steps,
                                     metrics=eval_metrics)
      if saved:
        console.line(f"step {step}: saving checkpoint {checkpoints.directory / str(step)}")
      if saved or eval_metrics is not None:  # (a resume keeps the records up to its checkpoint)
        writer.flush()
      bar.update(1)
      if terminate.requested:
        checkpoints.wait()
        console.line(f"SIGTERM: saved a complete checkpoint at step {step}; exiting")
        writer.close()
        checkpoints.close()
        return None
  checkpoints.wait()
  checkpoints.close()
  if result is None or split != "test":  # the test split, once, on the final weights
    start_test = time.time()
    result = evaluate(evaluate_batch, train_lib.eval_params(state), data.test, cfg, spec, mesh,
                      arc_evaluator_for(cfg, "test") if split != "test" else arc_evaluator,
                      strategy, "test")
    test_scalars = {k.replace("@", "_at_"): v for k, v in result.items()
                    if isinstance(v, float)}
    writer.write(total_steps, "test", {**test_scalars, "seconds": time.time() - start_test},
                 split="test")
  writer.close()
  report_eval(result, workdir_path / "eval_table.txt", console)
  console.line(f"total time {time.time() - start:.0f}s")
  if jax.process_index() == 0:
    write_plots(workdir_path, console)
  return result


def mfu_inputs(device, num_devices: int, spec: ModelSpec, train_cfg, total_steps: int, state,
               batch) -> tuple[int | None, float | None]:
  """(model FLOPs of one train step, peak FLOP/s of all devices) for MFU, on GPU/TPU; the peak
  is None where the table has none (e.g. float32 compute), both are None on CPU (no CPU matrix
  peak to divide by, and the FLOP count costs a trace)."""
  if device.platform == "cpu":
    return None, None
  step_flops = flops_lib.model_flops(
      spec, functools.partial(train_lib.train_step, train_cfg=train_cfg, total_steps=total_steps),
      state, batch)
  peak = flops_lib.peak_tflops(device.device_kind, spec.compute_dtype)
  return step_flops, peak * 1e12 * num_devices if peak else None


def write_plots(workdir: epath.Path, console: console_lib.Console) -> None:
  """The run's curves (trm_jax/plot.py) into workdir/plots; a failure only warns."""
  from trm_jax import plot
  try:
    written = plot.plot_runs([workdir], workdir / "plots")
  except Exception as error:  # noqa: BLE001  (the run itself has succeeded)
    logging.warning("could not plot %s (%s: %s); `python -m trm_jax.plot --workdir %s` "
                    "retries", workdir, type(error).__name__, error, workdir)
    return
  console.line(f"plots: {', '.join(str(p) for p in written)}")


def initialize_distributed() -> None:
  """Joins the multi-controller runtime on a pod (cluster auto-detected, or the flags); alone
  otherwise."""
  if _COORDINATOR.value:
    # Only the CPU backend reads this; it lets CPU processes all-reduce across hosts.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                               heartbeat_timeout_seconds=multihost.HEARTBEAT_TIMEOUT_S)
    return
  try:
    jax.distributed.initialize(heartbeat_timeout_seconds=multihost.HEARTBEAT_TIMEOUT_S)
  except (ValueError, RuntimeError) as error:  # no cluster to join: a single process
    logging.info("single-process run (%s)", error)


def main(argv):
  del argv
  if not flags.FLAGS["verbosity"].present:
    console_lib.quiet_libraries()
  logging.info(_HOST_MALLOC)
  initialize_distributed()
  with multihost.failures_stop_all():  # one process failing ends all, naming it
    try:
      run(ml_collections.ConfigDict(_CONFIG.value.to_dict()), _WORKDIR.value,
          eval_only=_EVAL_ONLY.value, checkpoint_dir=_CHECKPOINT_DIR.value,
          allow_config_change=_ALLOW_CONFIG_CHANGE.value)
    except ConfigChangeError as error:  # the user's to resolve: the message, not a traceback
      sys.exit(f"error: {error}")
    if jax.process_count() > 1:  # leave together; a lone exit can hang the other processes
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("trm_jax done")
  if jax.process_count() > 1:
    jax.distributed.shutdown()


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
