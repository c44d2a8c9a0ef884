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
run executes (mesh_shape), its kernels (execution.matmul, execution.attention), how it keeps
checkpoints, and where the workdir is (the data folders that default to it) may change freely.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

import jax
import ml_collections
from absl import app, flags, logging
from etils import epath
from ml_collections import config_flags

from trm_jax import banner
from trm_jax import checkpoint as checkpoint_lib
from trm_jax import console as console_lib
from trm_jax import evaluation
from trm_jax import experiment
from trm_jax import flops as flops_lib
from trm_jax import host_memory
from trm_jax import inference
from trm_jax import metrics as metrics_lib
from trm_jax import model as model_lib
from trm_jax import multihost
from trm_jax import profiling
from trm_jax import resume
from trm_jax import sharding as sharding_lib
from trm_jax import steps as steps_lib
from trm_jax import train as train_lib
from trm_jax.config import ModelSpec
from trm_jax.data import datasets, pipeline
from trm_jax.kernels import execution

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
        checkpoint_dir: str | None = None, allow_config_change: bool = False
        ) -> dict[str, Any]:
  """The whole experiment; returns the test evaluation (or None when stopped by SIGTERM).

  `eval_only`: restore the newest checkpoint (of `checkpoint_dir`, default the workdir's) and
  evaluate it, without training (the evaluation settings may differ from the run's).
  `allow_config_change`: resume even when `cfg` differs from the workdir's config.json.
  """
  experiment.validate_experiment(cfg)
  settings = experiment.execution_settings(cfg)  # the kernels every compiled step uses
  # Shapes are filled in from the data later; fields (and the eval strategy) checked now.
  strategy = inference.Strategy.from_config(cfg.eval)
  strategy.validate(ModelSpec.from_config(cfg.model))
  console = console_lib.Console()
  workdir_path = epath.Path(workdir)
  in_workdir = experiment.data_folders(cfg, workdir)
  workdir_path.mkdir(parents=True, exist_ok=True)
  checkpoint_path = epath.Path(checkpoint_dir) if checkpoint_dir else workdir_path / "checkpoints"
  # Before anything is built or compiled (every process reads config.json before process 0
  # rewrites it, which it does after the processes compared their data).
  changes = {} if eval_only else resume.config_changes_on_resume(
      cfg, workdir_path, checkpoint_path, allow_config_change, in_workdir)

  # --- Input (every process builds the dataset where it is not yet; all check they agree).
  start = time.time()
  with console_lib.library_output():
    data = datasets.prepare_on_every_host(cfg.data)
  data_seconds = time.time() - start
  model_cfg = experiment.model_config_for(cfg, data.metadata)
  spec = ModelSpec.from_config(model_cfg)
  schedule = experiment.Schedule.of(cfg, data.train_index.epoch_length)
  total_steps, batch_size = schedule.total_steps, cfg.train.global_batch_size

  # --- Mesh, model and state.
  mesh = sharding_lib.make_mesh(tuple(cfg.mesh_shape))
  experiment.check_batches_fit(cfg, mesh)
  experiment.check_batch_keys(spec, data)
  jax.set_mesh(mesh)
  if eval_only:
    with execution.using(settings):
      return evaluation.evaluate_checkpoint(cfg, data, mesh, checkpoint_path, workdir_path,
                                            console, data_seconds)
  split = evaluation.evaluation_split(cfg, data)  # periodic evaluations; test is read once
  eval_source = data.validation if split == "validation" else data.test
  train_iter = iter(pipeline.train_dataset(
      data.train, data.train_index, seed=cfg.train.seed, global_batch_size=batch_size,
      num_epochs=cfg.train.epochs + 1, process_index=jax.process_index(),
      process_count=jax.process_count(), keys=model_lib.scheme_of(spec).batch_keys))
  start_position = pipeline.stream_position(train_iter, jax.process_count())
  example = sharding_lib.global_batch(mesh, next(train_iter))  # shapes; the stream is rewound
  state = train_lib.init_state(model_cfg, cfg.train, example, total_steps,
                               jax.random.key(cfg.train.seed))
  state = jax.device_put(state, sharding_lib.tree_shardings(mesh, state))
  console.header(banner.run_header(workdir_path, mesh, spec, state["trainable"],
                                   state.get("puzzle_emb"), cfg, data, data_seconds)
                 + [("training", schedule.describe(batch_size))])

  # --- Checkpoints: resume from the newest good one in the workdir.
  resolved = cfg.to_dict()  # the run's config: config.json and every checkpoint hold it
  resolved["model"] = model_cfg.to_dict()
  checkpoints = checkpoint_lib.CheckpointManager(
      checkpoint_path, save_interval_steps=schedule.save_every, keep=cfg.train.keep_checkpoints,
      keep_best=cfg.train.keep_best_checkpoints, config=resolved)
  state, first_step = resume.restore(checkpoints, state, train_iter, start_position, console)
  resume.record_start(workdir_path, resolved, first_step, changes, console)

  # --- Compile (before the loop, so that neither throughput nor evaluation times hold it).
  start_compile = time.time()
  with execution.using(settings):
    train_step = steps_lib.train_step(spec, cfg.train, total_steps, mesh, state,
                                      example).compile()
    evaluate = evaluation.Evaluator(cfg, spec, strategy, train_lib.eval_params(state),
                                    data.test, mesh)
  console.line(f"compiled in {time.time() - start_compile:.1f}s")

  # --- Loop.
  writer = metrics_lib.MetricWriter(workdir_path, resume_step=first_step - 1)
  passes_per_step = model_lib.forward_passes_per_step(spec)
  throughput = metrics_lib.Throughput(
      batch_size, passes_per_step,
      *mfu_inputs(jax.devices()[0], jax.device_count(), spec, cfg.train, total_steps, state,
                  example))
  window = metrics_lib.TrainWindow(batch_size, passes_per_step, throughput,
                                   model_lib.scheme_of(spec).metrics())
  terminate = _TerminationFlag()
  last_eval = (None, None)
  tracer = profiling.StepTracer(cfg.train.get("profile_steps", ()), workdir_path / "profile",
                                total_steps)
  with console.progress(total=total_steps, initial=first_step - 1) as bar, tracer:
    for step in range(first_step, total_steps + 1):
      tracer.begin(step)
      state, metrics = train_step(state, sharding_lib.global_batch(mesh, next(train_iter)))
      throughput.exclude(tracer.end(step, state))
      window.add(metrics)
      if step % cfg.train.log_every_steps == 0 or step == total_steps:
        record = window.record(step, str(workdir_path / metrics_lib.METRICS_FILE))
        writer.write(step, "train", record)
        bar.set_postfix({"loss": f"{record['lm_loss']:.3f}",
                         "exact": f"{record['exact_accuracy']:.3f}",
                         "examples/s": f"{record['examples_per_s']:.0f}"}, refresh=False)
      scalars = None
      if schedule.is_eval_step(step):
        jax.block_until_ready(state)  # the queued train steps are training time
        eval_start = time.time()
        result = evaluate(train_lib.eval_params(state), eval_source, split)
        seconds = time.time() - eval_start
        throughput.exclude(seconds)
        scalars = evaluate.scalars(result)
        last_eval = (step, result)
        writer.write(step, "eval", {**scalars, "seconds": seconds}, split=split)
        console.line(f"step {step}: {split} exact_accuracy {result['exact_accuracy']:.4f} "
                     f"({seconds:.1f}s)")
      position = pipeline.stream_position(train_iter, jax.process_count())
      saved = checkpoints.maybe_save(step, state, {"data_iterator": position},
                                     force=terminate.requested or step == total_steps,
                                     metrics=scalars)
      if saved:
        console.line(f"step {step}: saving checkpoint {checkpoints.directory / str(step)}")
      if saved or scalars is not None:  # (a resume keeps the records up to its checkpoint)
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

  # --- Test, once, on the final weights (without a validation split, periodic evaluations
  # read test: the last one is it).
  result = last_eval[1] if split == "test" and last_eval[0] == total_steps else None
  if result is None:
    test_start = time.time()
    result = evaluate(train_lib.eval_params(state), data.test, "test")
    writer.write(total_steps, "test", {**evaluate.scalars(result),
                                       "seconds": time.time() - test_start}, split="test")
  writer.close()
  evaluation.report_eval(result, workdir_path / "eval_table.txt", console)
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
  step_flops = train_lib.step_flops(spec, train_cfg, total_steps, state, batch)
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


def apply_host_settings() -> str:
  """The process-wide host settings of a training process (`TRM_JAX_HOST_MALLOC`, see
  trm_jax/host_memory.py), applied before JAX starts a backend; returns what was applied.
  Importing this module applies nothing."""
  return host_memory.configure(os.environ.get("TRM_JAX_HOST_MALLOC", "auto"),
                               source="environment variable TRM_JAX_HOST_MALLOC")


def main(argv):
  del argv
  settings = apply_host_settings()  # first: before anything starts a JAX backend
  console_lib.quiet_unless_verbose()
  logging.info(settings)
  initialize_distributed()
  with multihost.failures_stop_all():  # one process failing ends all, naming it
    try:
      run(ml_collections.ConfigDict(_CONFIG.value.to_dict()), _WORKDIR.value,
          eval_only=_EVAL_ONLY.value, checkpoint_dir=_CHECKPOINT_DIR.value,
          allow_config_change=_ALLOW_CONFIG_CHANGE.value)
    except resume.ConfigChangeError as error:  # the user's to resolve: the message, not a traceback
      sys.exit(f"error: {error}")
    if jax.process_count() > 1:  # leave together; a lone exit can hang the other processes
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("trm_jax done")
  if jax.process_count() > 1:
    jax.distributed.shutdown()


if __name__ == "__main__":
  if moved := experiment.moved_flag(sys.argv):  # before the config flag fails on it
    sys.exit(f"error: {moved}")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main)
