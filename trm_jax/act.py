"""Adaptive computation time: the state that persists across supervision steps, for any scheme.

The ACT state is a plain pytree:
  carry   - the scheme's per-row carry, plus `steps` (supervision steps taken by each row's
            current example, int32 [B]) and `reset` (rows restarting at the next step);
  halted  - rows that finished; they take the next batch's example at the next step;
  data    - each row's current example (`inputs`, `labels`, `puzzle_identifiers`, ...).

Static shapes throughout: halted rows are replaced with `jnp.where`, never removed. What a
step computes, how a row halts and what resets with it are the scheme's (recursion.py).
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from trm_jax import model as model_lib
from trm_jax.config import ModelSpec
from trm_jax.recursion import Readout

State = dict


def initial_state(model_config, batch: Mapping[str, jax.Array]) -> State:
  """All rows halted, so the first step loads every row from its batch."""
  spec = ModelSpec.from_config(model_config)
  batch_size = batch["inputs"].shape[0]
  return {
      "carry": model_lib.initial_carry(spec, batch_size),
      "halted": jnp.ones((batch_size,), bool),
      "data": jax.tree.map(jnp.zeros_like, dict(batch)),
  }


def refresh(spec: ModelSpec, state: State, batch: Mapping[str, jax.Array],
            rng: jax.Array | None = None) -> State:
  """Rows that halted take the same rows of `batch` and restart (the scheme resets its own
  per-row state from `rng`, e.g. DIS draws the new rows' target paths)."""
  halted = state["halted"]

  def pick(new, old):
    return jnp.where(halted.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

  carry = model_lib.scheme_of(spec).refresh(state["carry"], halted, batch, rng)
  return {
      "carry": dict(carry, reset=halted, steps=jnp.where(halted, 0, carry["steps"])),
      "halted": halted,
      "data": {k: pick(batch[k], v) for k, v in state["data"].items()},
  }


def advance(params: model_lib.Params, rows: jax.Array | None, spec: ModelSpec, state: State,
            rng: jax.Array | None = None, *, training: bool, adaptive_eval: bool = False,
            record: bool = False) -> tuple[State, Readout]:
  """One supervision step on the refreshed state, then the scheme's halting decision."""
  carry, readout = model_lib.step(params, rows, spec, state["carry"], state["data"], rng,
                                  training=training, record=record)
  halted = model_lib.scheme_of(spec).halted(readout, carry["steps"], rng, training=training,
                                             adaptive=adaptive_eval)
  return {"carry": carry, "halted": halted, "data": state["data"]}, readout
