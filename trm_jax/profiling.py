"""Profiler traces of chosen training steps (`train.profile_steps`), on any backend.

Each run of consecutive listed steps is one `jax.profiler` trace session, in its own folder
of the run's `profile/` (`step_7`, `steps_10-12`: sessions a second apart would share the
profiler's timestamped folder): `plugins/profile/<time>/<host>.xplane.pb` (TensorBoard's
profile plugin: `tensorboard --logdir WORKDIR/profile`, or xprof) and `perfetto_trace.json.gz`
next to it (drop it on ui.perfetto.dev). Each traced step carries a `StepTraceAnnotation`, so the
viewers split the trace by step. A session ends only once its last step has run on the device
(the step is asynchronous: stopping at dispatch would cut its kernels out of the trace).
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import jax


class StepTracer:
  """`begin(step)` before dispatching a training step, `end(step, outputs)` after; a context
  manager that ends a session left open (an exception, an early exit). Steps after
  `last_step` never run, so a run of listed steps ends there; `name` labels the steps."""

  def __init__(self, steps: Iterable[int], directory: Any, last_step: int, name: str = "train"):
    self._steps = frozenset(s for s in steps if s <= last_step)
    self._name = name
    self._directory = str(directory)
    self._session = False
    self._annotation = None

  def __enter__(self) -> "StepTracer":
    return self

  def __exit__(self, *exc_info) -> None:
    self._close_annotation()
    if self._session:
      jax.profiler.stop_trace()
      self._session = False

  def begin(self, step: int) -> None:
    """Starts a session at the first step of a run of listed steps; annotates listed steps."""
    if step not in self._steps:
      return
    if not self._session:
      last = step
      while last + 1 in self._steps:
        last += 1
      name = f"steps_{step}-{last}" if last > step else f"step_{step}"
      jax.profiler.start_trace(f"{self._directory}/{name}", create_perfetto_trace=True)
      self._session = True
    self._annotation = jax.profiler.StepTraceAnnotation(self._name, step_num=step)
    self._annotation.__enter__()

  def end(self, step: int, outputs: Any) -> float:
    """After step `step` was dispatched with `outputs`: at the last step of a run, waits for
    them and writes the trace. Returns the seconds the writing took (no training time)."""
    self._close_annotation()
    if not self._session or step + 1 in self._steps:
      return 0.0
    jax.block_until_ready(outputs)
    start = time.perf_counter()
    jax.profiler.stop_trace()
    self._session = False
    return time.perf_counter() - start

  def _close_annotation(self) -> None:
    if self._annotation is not None:
      self._annotation.__exit__(None, None, None)
      self._annotation = None
