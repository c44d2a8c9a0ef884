r"""Train and evaluate a TRM from an experiment config.

    python -m trm_jax.main --config experiments/sudoku.py:smoke --workdir /tmp/smoke
    python -m trm_jax.main --config experiments/sudoku.py:mlp --workdir DIR \
        --config.data.manual_dir=data/sudoku-extreme --config.train.epochs=1000

Writes to the workdir: config.json (the resolved config), metrics.jsonl (one JSON object per
logged step and per evaluation), TensorBoard event files under tb/, and eval_table.txt.
"""

from __future__ import annotations

import os

from trm_jax import host_memory

# Before JAX starts its backend: see trm_jax/host_memory.py.
_HOST_MALLOC = host_memory.configure(os.environ.get("TRM_JAX_HOST_MALLOC", "auto"),
                                    source="environment variable TRM_JAX_HOST_MALLOC")

import functools
import json
import pathlib
import signal
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from trm_jax import checkpoint as checkpoint_lib
from trm_jax import inference
from trm_jax import model as model_lib
from trm_jax import sharding as sharding_lib
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


def model_config_for(cfg: ml_collections.ConfigDict, metadata: dict[str, Any]):
  """The experiment's model config with the dataset's shapes filled in."""
  model_cfg = ml_collections.ConfigDict(cfg.model.to_dict())
  model_cfg.seq_len = int(metadata["seq_len"])
  model_cfg.vocab_size = int(metadata["vocab_size"])
  model_cfg.num_puzzle_identifiers = int(metadata["num_puzzle_identifiers"])
  ModelSpec.from_config(model_cfg)
  return model_cfg


# ----------------------------------------------------------------------------------- logging --


class MetricWriter:
  """metrics.jsonl plus TensorBoard event files (tensorboardX: no TensorFlow needed).

  Only process 0 writes; on the others every call is a no-op.
  """

  def __init__(self, workdir: pathlib.Path):
    self._active = jax.process_index() == 0
    if not self._active:
      return
    from tensorboardX import SummaryWriter
    self._jsonl = open(workdir / "metrics.jsonl", "a")
    self._tb = SummaryWriter(str(workdir / "tb"))

  def write(self, step: int, kind: str, metrics: dict[str, float]) -> None:
    if not self._active:
      return
    self._jsonl.write(json.dumps({"step": step, "kind": kind, **metrics}) + "\n")
    self._jsonl.flush()
    for name, value in metrics.items():
      self._tb.add_scalar(f"{kind}/{name}", value, step)
    self._tb.flush()

  def close(self) -> None:
    if not self._active:
      return
    self._jsonl.close()
    self._tb.close()


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


def arc_evaluator_for(cfg: ml_collections.ConfigDict):
  """An ARC pass@K evaluator over the test set's tasks (None for other datasets)."""
  if cfg.data.builder != "arc":
    return None
  from trm_jax.data import arc, arc_eval
  builder_cfg = cfg.data.builder_config
  test_set = builder_cfg.test_set_name
  tasks = arc.load_subsets(cfg.data.manual_dir, [test_set], builder_cfg.get("prefix", "arc-agi"))
  return arc_eval.ArcEvaluator(tasks[test_set], pass_ks=tuple(cfg.eval.pass_ks))


def report_eval(result: dict[str, Any], path: pathlib.Path) -> None:
  """Prints the evaluation table; process 0 also writes it to `path`."""
  table = format_eval_table(result)
  if jax.process_index() == 0:
    path.write_text(table + "\n")
  print(table)


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


def evaluate(evaluate_batch, params, test_source, cfg, spec: ModelSpec, mesh,
             arc_evaluator=None, strategy: inference.Strategy = inference.Strategy()
             ) -> dict[str, Any]:
  """Exact and token accuracy after each supervision step, forward passes per example, and
  (ARC) pass@K over this evaluation's predictions only. `evaluate_batch` is
  `inference.eval_batch` with `strategy` (config section `eval`) bound, jitted.

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
  lines.append(f"test examples: {result['count']}")
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



def run(cfg: ml_collections.ConfigDict, workdir: str, *, eval_only: bool = False,
        checkpoint_dir: str | None = None) -> dict[str, Any]:
  """The whole experiment; returns the final evaluation (or None when stopped by SIGTERM).

  `eval_only`: restore the newest checkpoint (of `checkpoint_dir`, default the workdir's) and
  evaluate it, without training.
  """
  validate_experiment(cfg)
  # Shapes are filled in from the data later; fields (and the eval strategy) checked now.
  inference.Strategy.from_config(cfg.eval).validate(ModelSpec.from_config(cfg.model))
  workdir_path = pathlib.Path(workdir)
  workdir_path.mkdir(parents=True, exist_ok=True)
  if not cfg.data.data_dir:
    cfg.data.data_dir = str(workdir_path / "tfds")
  if cfg.data.get("generate") and cfg.data.generate.get("kind") and not cfg.data.manual_dir:
    cfg.data.manual_dir = str(workdir_path / "raw")

  # --- Input (process 0 builds the dataset; the others wait, then open it).
  start = time.time()
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    if jax.process_index() == 0:
      datasets.prepare(cfg.data)
    multihost_utils.sync_global_devices("dataset built")
    data = datasets.prepare(cfg.data, build=False)
  else:
    data = datasets.prepare(cfg.data)
  model_cfg = model_config_for(cfg, data.metadata)
  spec = ModelSpec.from_config(model_cfg)
  strategy = inference.Strategy.from_config(cfg.eval)
  resolved = cfg.to_dict()
  resolved["model"] = model_cfg.to_dict()
  if jax.process_index() == 0 and not eval_only:  # the run's config; evaluation leaves it be
    (workdir_path / "config.json").write_text(json.dumps(resolved, indent=1, default=str))
  logging.info("data ready in %.1fs: %d train records (%d per epoch), %d test",
               time.time() - start, data.train_index.num_records, data.train_index.epoch_length,
               len(data.test))
  global_batch = cfg.train.global_batch_size
  steps_per_epoch = data.train_index.epoch_length / global_batch
  total_steps = max(1, int(cfg.train.epochs * steps_per_epoch))
  if cfg.train.get("max_steps", 0):
    total_steps = min(total_steps, cfg.train.max_steps)
  eval_every = max(1, int(cfg.train.eval_interval * steps_per_epoch))
  train_iter = iter(pipeline.train_dataset(
      data.train, data.train_index, seed=cfg.train.seed, global_batch_size=global_batch,
      num_epochs=cfg.train.epochs + 1, process_index=jax.process_index(),
      process_count=jax.process_count()))

  # --- Mesh, model and state.
  mesh = sharding_lib.make_mesh(tuple(cfg.mesh_shape))
  check_batches_fit(cfg, mesh)
  jax.set_mesh(mesh)
  start_position = train_iter.get_state()
  example = next(train_iter)  # shapes only; the stream is rewound (or restored) below
  state = train_lib.init_state(model_cfg, cfg.train,
                               sharding_lib.global_batch(mesh, example),
                               total_steps, jax.random.key(cfg.train.seed))
  state_shardings = sharding_lib.tree_shardings(mesh, state)
  state = jax.device_put(state, state_shardings)
  logging.info("parameters: %d (+%d puzzle table); %d train steps, eval every %d",
               model_lib.count_params(state["trainable"]),
               state["puzzle_emb"].size if "puzzle_emb" in state else 0, total_steps, eval_every)

  # --- Checkpoints: resume from the newest good one in the workdir.
  checkpoints = checkpoint_lib.CheckpointManager(
      checkpoint_dir or workdir_path / "checkpoints", save_interval_steps=cfg.train.checkpoint_every_steps or eval_every,
      keep=cfg.train.keep_checkpoints, keep_best=cfg.train.keep_best_checkpoints,
      config=resolved)
  restored = checkpoints.restore_latest(state, {"data_iterator": start_position})
  first_step = 1
  if restored is not None:
    last_step, state, loop_state = restored
    train_iter.set_state(jax.tree.map(int, loop_state["data_iterator"]))
    first_step = last_step + 1
    print(f"resumed from checkpoint step {last_step} in {checkpoints.directory}")
  else:
    train_iter.set_state(start_position)
    if eval_only:
      raise FileNotFoundError(f"--eval_only: no checkpoint in {checkpoints.directory}")

  train_step = jax.jit(functools.partial(train_lib.train_step, spec=spec, train_cfg=cfg.train,
                                         total_steps=total_steps),
                       in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh)),
                       out_shardings=(state_shardings, None), donate_argnums=0)
  evaluate_batch = jax.jit(functools.partial(inference.eval_batch, spec=spec, strategy=strategy))
  arc_evaluator = arc_evaluator_for(cfg)
  passes_per_step = model_lib.forward_passes_per_step(spec)

  if eval_only:
    result = evaluate(evaluate_batch, train_lib.eval_params(state), data.test, cfg, spec, mesh,
                      arc_evaluator, strategy)
    print(f"evaluated checkpoint step {first_step - 1}")
    report_eval(result, workdir_path / f"eval_table_step{first_step - 1}.txt")
    return result

  # --- Loop.
  from tqdm import tqdm
  writer = MetricWriter(workdir_path)
  terminate = _TerminationFlag()
  pending = None
  result = None
  with tqdm(total=total_steps, initial=first_step - 1, desc="train", unit="step",
            disable=jax.process_index() != 0) as bar:
    for step in range(first_step, total_steps + 1):
      batch = next(train_iter)
      state, metrics = train_step(state, sharding_lib.global_batch(mesh, batch))
      pending = metrics if pending is None else jax.tree.map(jnp.add, pending, metrics)
      if step % cfg.train.log_every_steps == 0 or step == total_steps:
        sums = jax.device_get(pending)
        sums["lr"], sums["grad_norm"] = metrics["lr"], metrics["grad_norm"]
        if not all(np.isfinite(v) for v in jax.tree.leaves(sums)):
          bad = sorted(k for k, v in sums.items() if not np.isfinite(v))
          raise FloatingPointError(f"non-finite {bad} at step {step}; stopping (last good "
                                   f"metrics are in {workdir_path / 'metrics.jsonl'})")
        reduced = reduce_train_metrics(sums, global_batch * cfg.train.log_every_steps)
        reduced["count"] = float(sums["count"])
        if "steps" in reduced:  # measured: supervision steps of the examples that finished
          reduced["forward_passes_per_example"] = reduced["steps"] * passes_per_step
        writer.write(step, "train", reduced)
        bar.set_postfix(loss=f"{reduced['lm_loss']:.3f}", exact=f"{reduced['exact_accuracy']:.3f}")
        pending = None
      eval_metrics = None
      if is_eval_step(step, eval_every, total_steps):
        result = evaluate(evaluate_batch, train_lib.eval_params(state), data.test, cfg, spec,
                          mesh, arc_evaluator, strategy)
        scalars = {k: v for k, v in result.items() if isinstance(v, float)}
        scalars.update({f"exact_accuracy_step{k + 1}": v
                        for k, v in enumerate(result["exact_accuracy_per_step"])})
        eval_metrics = {k.replace("@", "_at_"): v for k, v in scalars.items()}
        writer.write(step, "eval", eval_metrics)
        bar.write(f"step {step}: eval exact_accuracy {result['exact_accuracy']:.4f}")
      checkpoints.maybe_save(step, state, {"data_iterator": train_iter.get_state()},
                             force=terminate.requested or step == total_steps,
                             metrics=eval_metrics)
      bar.update(1)
      if terminate.requested:
        checkpoints.wait()
        print(f"SIGTERM: saved a complete checkpoint at step {step}; exiting")
        writer.close()
        checkpoints.close()
        return None
  checkpoints.wait()
  checkpoints.close()
  writer.close()
  if result is None:  # resumed after the last step: nothing left to train
    result = evaluate(evaluate_batch, train_lib.eval_params(state), data.test, cfg, spec, mesh,
                      arc_evaluator, strategy)
  report_eval(result, workdir_path / "eval_table.txt")
  print(f"total time {time.time() - start:.0f}s")
  return result


def initialize_distributed() -> None:
  """Joins the multi-controller runtime on a pod (cluster auto-detected, or the flags); alone
  otherwise."""
  if _COORDINATOR.value:
    # Only the CPU backend reads this; it lets CPU processes all-reduce across hosts.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    return
  try:
    jax.distributed.initialize()
  except (ValueError, RuntimeError) as error:  # no cluster to join: a single process
    logging.info("single-process run (%s)", error)


def main(argv):
  del argv
  logging.info(_HOST_MALLOC)
  initialize_distributed()
  run(ml_collections.ConfigDict(_CONFIG.value.to_dict()), _WORKDIR.value,
      eval_only=_EVAL_ONLY.value, checkpoint_dir=_CHECKPOINT_DIR.value)
  if jax.process_count() > 1:  # leave together; a lone exit can hang the other processes
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("trm_jax done")
    jax.distributed.shutdown()


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
