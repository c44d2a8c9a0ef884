"""A run's metrics: metrics.jsonl and TensorBoard written on process 0, read back, and the
training throughput they record.

metrics.jsonl holds one JSON object per logged step ({"step", "kind": "train" | "eval" | "test",
"split" (evaluations: the split read), ...}): periodic evaluations ("eval") read the validation
split where the dataset has one (else test); a run with a validation split reads test once, at
the end ("test").
A resumed run first drops the records after the step it resumes from (the steps a crash made
it train twice), so the file keeps one record per step and kind; TensorBoard is told the same
with `purge_step`, which hides the older events from that step on.

The workdir may be on an object store (trm_jax/paths.py), where a file cannot be appended to
and every flush writes the whole object again: the writer keeps its records and appends them
at each `flush` (every record locally; on an object store at most every
REMOTE_FLUSH_SECONDS, and whenever the training loop flushes: evaluations, checkpoints,
close). A crash loses only the records not yet flushed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from typing import Any

import jax
import numpy as np
from etils import epath

from trm_jax import paths

METRICS_FILE = "metrics.jsonl"
# On an object store, the least time between two flushes that `write` makes itself.
REMOTE_FLUSH_SECONDS = 30.0


def read(workdir: paths.PathLike) -> list[dict[str, Any]]:
  """The records of `workdir`/metrics.jsonl, in file order."""
  path = epath.Path(workdir) / METRICS_FILE
  if not path.exists():
    raise FileNotFoundError(f"{path}: missing; `python -m trm_jax.main` writes it during training")
  records = []
  for number, line in enumerate(path.read_text().splitlines(), start=1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError as error:
      raise ValueError(f"{path}, line {number}: not valid JSON ({error})") from None
  return records


def drop_after(workdir: paths.PathLike, step: int) -> int:
  """Rewrites metrics.jsonl without the records of steps after `step` (and a last line that a
  crash cut short); returns how many lines it dropped. The new file replaces the old one
  atomically (a crash leaves one or the other; an object is replaced whole when written)."""
  path = epath.Path(workdir) / METRICS_FILE
  if not path.exists():
    return 0
  lines = path.read_text().splitlines(keepends=True)
  if lines and not lines[-1].endswith("\n"):  # a record the crash cut short
    lines[-1] = ""
  kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= step]
  if len(kept) == len(lines):
    return 0
  if paths.is_remote(path):
    path.write_text("".join(kept))
    return len(lines) - len(kept)
  partial = path.with_name(path.name + ".partial")
  partial.write_text("".join(kept))
  partial.replace(path)
  return len(lines) - len(kept)


class MetricWriter:
  """metrics.jsonl plus TensorBoard event files (tensorboardX: no TensorFlow needed) in tb/.

  Only process 0 writes; on the others every call is a no-op. `resume_step`: the checkpoint
  step the run resumes from; records after it are dropped first (see the module docstring).
  On an object store the event files are written to a local temporary directory and copied
  into tb/ at each flush (tensorboardX's own gs:// writer uploads again whenever it is
  garbage-collected).
  """

  def __init__(self, workdir: paths.PathLike, resume_step: int | None = None):
    self.active = jax.process_index() == 0
    if not self.active:
      return
    from tensorboardX import SummaryWriter
    workdir = epath.Path(workdir)
    purge_step = None
    if resume_step is not None:
      drop_after(workdir, resume_step)
      purge_step = resume_step + 1
    self._path = workdir / METRICS_FILE
    self._lines: list[str] = []
    self._tb_dir = workdir / "tb"
    remote = paths.is_remote(workdir)
    self._flush_seconds = REMOTE_FLUSH_SECONDS if remote else 0.0
    self._last_flush = time.monotonic()
    self._tb_local = tempfile.mkdtemp(prefix="trm_jax_tb_") if remote else None
    self._tb = SummaryWriter(self._tb_local or str(self._tb_dir), purge_step=purge_step)

  def write(self, step: int, kind: str, metrics: dict[str, float],
            split: str | None = None) -> None:
    """One record; `split`: the data split an evaluation read (kept in metrics.jsonl, and the
    TensorBoard tag's prefix in place of `kind`)."""
    if not self.active:
      return
    where = {"split": split} if split else {}
    self._lines.append(json.dumps({"step": step, "kind": kind, **where, **metrics}) + "\n")
    for name, value in metrics.items():
      self._tb.add_scalar(f"{split or kind}/{name}", value, step)
    if time.monotonic() - self._last_flush >= self._flush_seconds:
      self.flush()

  def flush(self) -> None:
    """Appends the records written since the last flush to metrics.jsonl; flushes TensorBoard."""
    if not self.active:
      return
    if self._lines:
      paths.append_text(self._path, "".join(self._lines))
      self._lines = []
    self._tb.flush()
    self._copy_tb()
    self._last_flush = time.monotonic()

  def _copy_tb(self) -> None:
    if self._tb_local is None:
      return
    self._tb_dir.mkdir(parents=True, exist_ok=True)
    for name in os.listdir(self._tb_local):
      with open(os.path.join(self._tb_local, name), "rb") as f:
        (self._tb_dir / name).write_bytes(f.read())

  def close(self) -> None:
    if not self.active:
      return
    self.flush()
    self._tb.close()
    if self._tb_local is not None:
      self._copy_tb()
      shutil.rmtree(self._tb_local, ignore_errors=True)


class Throughput:
  """Training speed over each logging window, from wall-clock time on the host.

  A window runs from the end of the previous one (the first: from construction) to `window()`,
  minus the seconds passed to `exclude()` (evaluations). Construct it after compiling the train
  step, so that no window holds compilation. A window ends when its last step's metrics reach
  the host, i.e. when that step has run on the device. Data loading and the synchronous part of
  checkpoint saves are training time and stay in.

  Rates: steps/s; examples/s (global batch rows); supervision steps/s, the same number for the
  persistent-carry loop, where one optimiser step is one supervision step of every row; forward
  passes/s, network calls over the whole batch (`passes_per_step` of them per step); and, when
  `flops_per_step` and `peak_flops_per_s` are known (GPU/TPU), model TFLOP/s and MFU.
  """

  def __init__(self, global_batch: int, passes_per_step: int,
               flops_per_step: int | None = None, peak_flops_per_s: float | None = None):
    self._batch = global_batch
    self._passes = passes_per_step
    self._flops = flops_per_step
    self._peak = peak_flops_per_s
    self._start = time.perf_counter()
    self._excluded = 0.0

  def exclude(self, seconds: float) -> None:
    """Leaves `seconds` (e.g. an evaluation inside the window) out of the current window."""
    self._excluded += seconds

  def window(self, steps: int) -> dict[str, float]:
    """The rates of the `steps` steps since the last window, and starts the next one."""
    now = time.perf_counter()
    seconds = max(now - self._start - self._excluded, 1e-9)
    self._start, self._excluded = now, 0.0
    steps_per_s = steps / seconds
    rates = {
        "steps_per_s": steps_per_s,
        "examples_per_s": steps_per_s * self._batch,
        "supervision_steps_per_s": steps_per_s,
        "forward_passes_per_s": steps_per_s * self._passes,
    }
    if self._flops:
      achieved = self._flops * steps_per_s
      rates["model_tflops_per_s"] = achieved / 1e12
      if self._peak:
        rates["mfu"] = achieved / self._peak
    return rates


def reduce_train_metrics(sums: dict[str, np.ndarray], global_batch: int,
                         reductions: dict[str, str]) -> dict[str, float]:
  """Each metric's sum reduced as the scheme declares it (`Scheme.metrics`): 'per_row' per
  example of the batches (the official losses: every row, every step), 'per_finished' per
  example that finished (`count`), 'sum' as it is; `lr` and `grad_norm` are the last step's."""
  count = max(float(sums["count"]), 1.0)
  divisor = {"sum": 1.0, "per_row": float(global_batch), "per_finished": count}
  out = {}
  for name, value in sums.items():
    how = "sum" if name in ("lr", "grad_norm") else reductions[name]
    out[name] = float(value) / divisor[how]
  return out


class TrainWindow:
  """The training metrics of the steps since the last log line, summed on device, and their
  record: per example (`reduce_train_metrics`), with the examples that finished, the forward
  passes they took and the window's throughput. Non-finite sums stop the run."""

  def __init__(self, global_batch: int, passes_per_step: int, throughput: "Throughput",
               reductions: dict[str, str]):
    self._batch, self._passes, self._throughput = global_batch, passes_per_step, throughput
    self._reductions = reductions
    self._sums, self._last, self._steps = None, None, 0

  def add(self, metrics) -> None:
    self._sums = metrics if self._sums is None else jax.tree.map(
        lambda a, b: a + b, self._sums, metrics)
    self._last = metrics
    self._steps += 1

  def record(self, step: int, where: str) -> dict[str, float]:
    sums = jax.device_get(self._sums)
    sums["lr"], sums["grad_norm"] = self._last["lr"], self._last["grad_norm"]
    if not all(np.isfinite(v) for v in jax.tree.leaves(sums)):
      bad = sorted(k for k, v in sums.items() if not np.isfinite(v))
      raise FloatingPointError(f"non-finite {bad} at step {step}; stopping (last good metrics "
                               f"are in {where})")
    # Per example of the window's batches (fewer than log_every_steps after a resume).
    reduced = reduce_train_metrics(sums, self._batch * self._steps, self._reductions)
    if "steps" in reduced:  # measured: supervision steps of the examples that finished
      reduced["forward_passes_per_example"] = reduced["steps"] * self._passes
    reduced.update(self._throughput.window(self._steps))
    self._sums, self._steps = None, 0
    return reduced
