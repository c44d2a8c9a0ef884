"""Orbax (V1 API) checkpoints of the whole training loop: exact, atomic, preemption-safe.

A checkpoint holds three checkpointables:
  state  - the train state pytree (params, optimiser, EMA, puzzle table, ACT carry, step, RNG);
  loop   - the data iterator's state (the next stream position), as a small pytree;
  config - the run's resolved experiment config as UTF-8 JSON bytes ({"json": uint8 array}; an
           array, not a string leaf, so it is stored like every other leaf), so that a
           checkpoint copied or moved on its own still says what it is (`trm_jax.load`).
Orbax writes into a temporary directory and renames it when complete (on gs://, which has no
atomic rename, it marks the directory complete with a commit_success.txt file instead), so a
killed save leaves no half checkpoint under a step name; `restore_latest` still verifies that
what it loads is complete and falls back to the previous good checkpoint, with a message, when
it is not. On several processes they all restore the same step: the newest that every one of
them can read.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils
from orbax.checkpoint import v1 as ocp
from orbax.checkpoint._src.futures import synchronization as orbax_synchronization

from trm_jax import paths


def _abstract(tree):
  """ShapeDtypeStructs with shardings (Orbax restores onto these shardings)."""
  def leaf(x):
    sharding = getattr(x, "sharding", None) or jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  return jax.tree.map(leaf, tree)


class CheckpointManager:
  """Interval + preemption saving, keep-last-N (+ best-N on a metric), automatic resume."""

  def __init__(self, directory, *, save_interval_steps: int, keep: int = 3,
               keep_best: int = 0, best_metric: str = "exact_accuracy",
               config: dict[str, Any] | None = None):
    self.directory = paths.absolute(directory)
    # Saved in every checkpoint (see the module docstring).
    self._config = None if config is None else {
        "json": np.frombuffer(json.dumps(config, default=str).encode(), np.uint8).copy()}
    policies = [ocp.training.save_decision_policies.FixedIntervalPolicy(save_interval_steps),
                ocp.training.save_decision_policies.PreemptionCheckpointingPolicy()]
    preserve = [ocp.training.preservation_policies.LatestN(keep)]
    if keep_best:
      preserve.append(ocp.training.preservation_policies.BestN(
          get_metric_fn=lambda metrics: metrics[best_metric], reverse=False, n=keep_best,
          keep_checkpoints_without_metrics=False))
    self._checkpointer = ocp.training.Checkpointer(
        self.directory,
        save_decision_policy=ocp.training.save_decision_policies.AnySavePolicy(policies),
        preservation_policy=ocp.training.preservation_policies.AnyPreservationPolicy(preserve))

  def maybe_save(self, step: int, state, loop_state: dict[str, Any], *, force: bool = False,
                 metrics: dict[str, float] | None = None) -> bool:
    """Saves asynchronously when the policies (interval, preemption) or `force` say so."""
    # Asked first: orbax builds (and logs) its handlers on every save call, even one it declines.
    if not force and not self._checkpointer.should_save(step):
      return False
    checkpointables = {"state": state, "loop": loop_state}
    if self._config is not None:
      checkpointables["config"] = self._config
    return self._checkpointer.save_checkpointables_async(
        step, checkpointables, force=force, metrics=metrics) is not None

  def steps(self) -> list[int]:
    return sorted(c.step for c in self._checkpointer.checkpoints)

  def restore_latest(self, state_like, loop_like: dict[str, Any]):
    """(step, state, loop_state) from the newest loadable checkpoint, or None when there is none.

    `state_like` gives structure, dtypes and shardings (e.g. a freshly initialised state), so a
    checkpoint written on one mesh restores onto another. With several processes, each loads
    on its own and they then agree: a checkpoint that any of them cannot read is set aside
    (renamed <step>.unreadable, by process 0) and all of them try the next older one, so that
    they never train on from different steps.
    """
    abstract = {"state": _abstract(state_like), "loop": loop_like}
    self._checkpointer.reload()
    set_aside = set()
    while (step := _newest_of_all(set(self.steps()) - set_aside)) is not None:
      try:
        loaded, error = self._load_alone(step, abstract), None
      except Exception as failure:  # noqa: BLE001  (whatever it is, the others must hear of it)
        loaded, error = None, failure
      failed = _processes_where(error is not None)
      if not failed:
        return step, loaded["state"], loaded["loop"]
      aside = self.directory / f"{step}.unreadable"
      where = f" on process(es) {failed}" if jax.process_count() > 1 else ""
      here = "readable here" if error is None else f"{type(error).__name__}: {error}"
      logging.warning("checkpoint step %d in %s is incomplete or corrupted%s (%s); moved to %s, "
                      "falling back to an earlier checkpoint", step, self.directory, where, here,
                      aside.name)
      # Once for all, after every process has tried it (the gather above); the barrier keeps
      # the others from listing the directory while it is being renamed.
      if jax.process_index() == 0:
        (self.directory / str(step)).rename(aside)
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"checkpoint step {step} set aside")
      self._checkpointer.reload()
      set_aside.add(step)
    return None

  def _load_alone(self, step: int, abstract: dict[str, Any]) -> dict[str, Any]:
    """One checkpoint loaded by this process alone: Orbax's own load waits for all processes in
    barriers, where the others would hang until its timeout (minutes) when this one raises."""
    alone = ocp.Context()
    alone.multiprocessing.primary_host = jax.process_index()
    alone.multiprocessing.active_processes = {jax.process_index()}
    before = orbax_synchronization.OperationIdGenerator.get_current_operation_id()
    try:
      with alone:
        return ocp.load_checkpointables(self.directory / str(step), abstract)
    finally:
      # Orbax names the barriers of later saves by a per-process count of its operations; a load
      # that failed before it counted itself must count here, or the counts (and the names of
      # the processes' barriers) differ and the next save waits in its barrier until Orbax's
      # timeout (seen with tests/test_multihost.py's injected failure).
      if orbax_synchronization.OperationIdGenerator.get_current_operation_id() == before:
        orbax_synchronization.OperationIdGenerator.next_operation_id()

  def wait(self) -> None:
    self._checkpointer.wait()

  def close(self) -> None:
    self._checkpointer.close()


def _newest_of_all(steps: set[int]) -> int | None:
  """The newest step any process lists (None when none lists one): a process that does not see
  it fails to load it, so all fall back together rather than each from its own listing."""
  newest = max(steps, default=-1)
  if jax.process_count() > 1:
    newest = int(np.max(multihost_utils.process_allgather(np.int32(newest))))
  return None if newest < 0 else newest


def _processes_where(flag: bool) -> list[int]:
  """The indices of the processes that passed True (every process must call this)."""
  if jax.process_count() == 1:
    return [0] if flag else []
  return np.flatnonzero(multihost_utils.process_allgather(np.int32(flag))).tolist()


def load_config(step_dir) -> dict[str, Any] | None:
  """The resolved experiment config saved in one checkpoint's directory, or None when the
  checkpoint has none (written before configs were saved in checkpoints)."""
  if not (epath.Path(step_dir) / "config").is_dir():
    return None
  text = ocp.load_checkpointables(step_dir, {"config": None})["config"]["json"]
  if isinstance(text, str):  # written as a string leaf by the first version of this format
    return json.loads(text)
  return json.loads(np.asarray(text, np.uint8).tobytes().decode())
