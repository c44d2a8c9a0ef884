"""Evaluation of a run: the compiled evaluation batch over a split, sharded like training,
the ARC vote, the split periodic evaluations read, and the table every evaluation prints;
`evaluate_checkpoint` is `python -m trm_jax.main --eval_only`."""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from trm_jax import banner
from trm_jax import console as console_lib
from trm_jax import inference
from trm_jax import runs as runs_lib
from trm_jax import sharding as sharding_lib
from trm_jax import steps as steps_lib
from trm_jax import train as train_lib
from trm_jax.config import ModelSpec
from trm_jax.data import datasets, pipeline
from trm_jax.experiment import DATA_SHAPE_FIELDS

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
  header = banner.run_header(workdir_path, mesh, spec, trainable, table, cfg, data, data_seconds)
  console.header(header + [("checkpoint", f"step {run.step} of {run.checkpoint.parent}")])
  evaluate_batch = compile_evaluation(spec, strategy, run.params, data.test, cfg, mesh)
  result = evaluate(evaluate_batch, run.params, data.test, cfg, spec, mesh,
                    arc_evaluator_for(cfg), strategy)
  console.line(f"evaluated checkpoint step {run.step}")
  report_eval(result, workdir_path / f"eval_table_step{run.step}.txt", console)
  return result


class Evaluator:
  """One compiled evaluation batch for the run's model, strategy and mesh, over any split:
  `evaluator(params, source, split)` is `evaluate` with its ARC vote over that split's tasks;
  `scalars(result)` is what metrics.jsonl records of it."""

  def __init__(self, cfg, spec: ModelSpec, strategy: inference.Strategy, params, source, mesh):
    self._cfg, self._spec, self._strategy, self._mesh = cfg, spec, strategy, mesh
    self._batch = compile_evaluation(spec, strategy, params, source, cfg, mesh)
    self._arc = {}

  def __call__(self, params, source, split: str) -> dict[str, Any]:
    if split not in self._arc:
      self._arc[split] = arc_evaluator_for(self._cfg, split)
    return evaluate(self._batch, params, source, self._cfg, self._spec, self._mesh,
                    self._arc[split], self._strategy, split)

  @staticmethod
  def scalars(result: dict[str, Any]) -> dict[str, float]:
    out = {k: v for k, v in result.items() if isinstance(v, float)}
    out.update({f"exact_accuracy_step{k + 1}": v
                for k, v in enumerate(result["exact_accuracy_per_step"])})
    return {k.replace("@", "_at_"): v for k, v in out.items()}
