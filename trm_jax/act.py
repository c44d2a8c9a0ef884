"""Adaptive computation time: the carry that persists across supervision steps.

The ACT state is a plain pytree:
  carry   - latents (y, z) and the per-row `reset` flag (see `model.forward`);
  steps   - supervision steps taken by each row's current example, int32 [B];
  halted  - rows that finished; they take the next batch's example at the next step;
  data    - each row's current example (`inputs`, `labels`, `puzzle_identifiers`, ...).

Static shapes throughout: halted rows are replaced with `jnp.where`, never removed.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from trm_jax import model as model_lib
from trm_jax.config import ModelSpec

State = dict


def initial_state(model_config, batch: Mapping[str, jax.Array]) -> State:
  """All rows halted, so the first step loads every row from its batch."""
  spec = ModelSpec.from_config(model_config)
  batch_size = batch["inputs"].shape[0]
  return {
      "carry": model_lib.initial_carry(spec, batch_size),
      "steps": jnp.zeros((batch_size,), jnp.int32),
      "halted": jnp.ones((batch_size,), bool),
      "data": jax.tree.map(jnp.zeros_like, dict(batch)),
  }


def refresh(state: State, batch: Mapping[str, jax.Array]) -> State:
  """Rows that halted take the same rows of `batch` and restart from the initial latents."""
  halted = state["halted"]

  def pick(new, old):
    return jnp.where(halted.reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

  return {
      "carry": dict(state["carry"], reset=halted),
      "steps": jnp.where(halted, 0, state["steps"]),
      "halted": halted,
      "data": {k: pick(batch[k], v) for k, v in state["data"].items()},
  }


def advance(params: model_lib.Params, rows: jax.Array | None, spec: ModelSpec, state: State,
            rng: jax.Array | None = None, *, training: bool,
            adaptive_eval: bool = False) -> tuple[State, dict[str, jax.Array]]:
  """One supervision step on the refreshed state, then the halting decision.

  Training halts a row when its Q head says so (`q_halt > 0`, or `q_halt > q_continue` with the
  continue head), never before a per-sample minimum drawn with probability
  `halt_exploration_prob` from U{2..N_sup}. Evaluation runs all N_sup steps unless
  `adaptive_eval`, which halts on the Q head without exploration.
  """
  data = state["data"]
  carry, logits, q_halt, q_continue = model_lib.forward(params, spec, state["carry"],
                                                        data["inputs"], rows)
  steps = state["steps"] + 1
  is_last = steps >= spec.halt_max_steps
  outputs = {"logits": logits, "q_halt": q_halt, "q_continue": q_continue}
  halted = is_last
  if (training or adaptive_eval) and spec.halt_max_steps > 1:
    q_says_halt = q_halt > 0 if spec.no_ACT_continue else q_halt > q_continue
    halted = halted | jax.lax.stop_gradient(q_says_halt)
  if training and spec.halt_max_steps > 1:
    if spec.halt_exploration_prob > 0:
      explore_rng, steps_rng = jax.random.split(rng)
      explore = jax.random.uniform(explore_rng, steps.shape) < spec.halt_exploration_prob
      min_steps = jax.random.randint(steps_rng, steps.shape, 2, spec.halt_max_steps + 1)
      halted = halted & (steps >= jnp.where(explore, min_steps, 0))
    if not spec.no_ACT_continue:
      # Bootstrapped target from one more (no-grad) step, as in the official code (PQN-style).
      frozen_params, frozen_rows = jax.lax.stop_gradient((params, rows))
      _, _, next_halt, next_continue = model_lib.forward(frozen_params, spec, carry,
                                                         data["inputs"], frozen_rows)
      outputs["target_q_continue"] = jax.nn.sigmoid(
          jnp.where(is_last, next_halt, jnp.maximum(next_halt, next_continue)))
  new_state = {"carry": carry, "steps": steps, "halted": halted, "data": data}
  return new_state, outputs
