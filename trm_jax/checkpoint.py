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
it is not.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
from absl import logging
from etils import epath
from orbax.checkpoint import v1 as ocp

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
    checkpoint written on one mesh restores onto another.
    """
    self._checkpointer.reload()
    for step in reversed(self.steps()):
      try:
        loaded = self._checkpointer.load_checkpointables(
            step, {"state": _abstract(state_like), "loop": loop_like})
      except Exception as error:  # A damaged checkpoint: say so and try an older one.
        aside = self.directory / f"{step}.unreadable"
        logging.warning("checkpoint step %d in %s is incomplete or corrupted (%s: %s); moved "
                        "to %s, falling back to an earlier checkpoint", step, self.directory,
                        type(error).__name__, error, aside.name)
        if jax.process_index() == 0:
          (self.directory / str(step)).rename(aside)
        self._checkpointer.reload()
        continue
      return step, loaded["state"], loaded["loop"]
    return None

  def wait(self) -> None:
    self._checkpointer.wait()

  def close(self) -> None:
    self._checkpointer.close()


def load_config(step_dir) -> dict[str, Any] | None:
  """The resolved experiment config saved in one checkpoint's directory, or None when the
  checkpoint has none (written before configs were saved in checkpoints)."""
  if not (epath.Path(step_dir) / "config").is_dir():
    return None
  text = ocp.load_checkpointables(step_dir, {"config": None})["config"]["json"]
  if isinstance(text, str):  # written as a string leaf by the first version of this format
    return json.loads(text)
  return json.loads(np.asarray(text, np.uint8).tobytes().decode())
