"""TRM (Jolicoeur-Martineau 2025), as the official code runs it.

One supervision step: T-1 latent cycles without gradient, one with (each cycle n z-updates and
one y-update of the shared net), then the heads. Supervised with the labels (stablemax CE) and
a Q halting head (BCE on "is the sequence correct", plus the bootstrapped Q-continue target when
`no_ACT_continue` is off). Halts when the Q head says so in training (with exploration), after
N_sup steps at evaluation (or on the Q head with adaptive evaluation).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp

from trm_jax import losses, recursion
from trm_jax import model as model_lib
from trm_jax.config import ModelSpec
from trm_jax.recursion import Readout


@dataclasses.dataclass(frozen=True)
class TRM(recursion.Scheme):
  name: str = "trm"
  recur: recursion.RecurFn = recursion.trm_recursion
  passes: Callable[[ModelSpec], int] = lambda spec: spec.H_cycles * (spec.L_cycles + 1)

  @property
  def recur_fn(self):
    return self.recur

  def step(self, params, rows, spec, carry, data, t, rng, *, training, record=False):
    del rng  # the recursion is deterministic; halting draws its own randomness
    model = model_lib.merge(spec, params)
    latents = model_lib.reset_latents(params, spec, carry)
    x = self.embed(model, rows, spec, carry, data, t)
    trace = None
    if record:
      latents, trace = self.recurse(params, spec, latents, x, on_y=lambda y: model.heads(y)[0])
    else:
      latents = self.recurse(params, spec, latents, x)
    logits, q_halt, q_continue = model.heads(latents.y)
    new_carry = self.next_carry(carry, latents, logits)
    extras = self.q_continue_target(params, rows, spec, new_carry, data, t, training)
    return new_carry, Readout(logits, q_halt, q_continue, trace, extras)

  def embed(self, model, rows, spec, carry, data, t):
    """The step's input embedding x (subclasses change what the step is conditioned on)."""
    return model.embed(data["inputs"], rows)

  def next_carry(self, carry, latents, logits):
    """The detached carry after the step (subclasses add what they track per row)."""
    return dict(carry, y=jax.lax.stop_gradient(latents.y), z=jax.lax.stop_gradient(latents.z))

  def q_continue_target(self, params, rows, spec, new_carry, data, t, training):
    """{'target_q_continue'} when the continue head is trained: the bootstrapped target from one
    more (no-grad) step, as in the official code (PQN-style); else {}."""
    if not training or spec.no_ACT_continue or spec.halt_max_steps <= 1:
      return {}
    frozen_params, frozen_rows = jax.lax.stop_gradient((params, rows))
    next_carry = dict(new_carry, reset=jnp.zeros_like(new_carry["reset"]))
    _, after = self.step(frozen_params, frozen_rows, spec, next_carry, data, t + 1, None,
                         training=False)
    return {"target_q_continue": jax.nn.sigmoid(jnp.where(
        t >= spec.halt_max_steps, after.q_halt, jnp.maximum(after.q_halt, after.q_continue)))}

  def recurse(self, params, spec, latents, x, *, on_y=None):
    """The latent recursion of one step (with `on_y`: also the readouts after each y update)."""
    net = model_lib.net_fn(spec)
    if on_y is None:
      return self.recur(spec, net, params["net"], latents, x)
    if self.recur is not recursion.trm_recursion:
      raise NotImplementedError(f"scheme '{self.name}' does not record per-update readouts")
    return recursion.trm_recursion(spec, net, params["net"], latents, x, on_y=on_y)

  def loss(self, spec, readout, targets, carry, data, halted):
    return losses.act_loss(readout.logits, readout.q_halt, readout.q_continue, targets, halted,
                           carry["steps"], spec.loss_type, readout.extras.get("target_q_continue"))

  def halted(self, spec, readout, t, rng, *, training, adaptive=False):
    """Training halts a row when its Q head says so (`q_halt > 0`, or `q_halt > q_continue`
    with the continue head), never before a per-sample minimum drawn with probability
    `halt_exploration_prob` from U{2..N_sup}. Evaluation runs all N_sup steps unless
    `adaptive`, which halts on the Q head without exploration."""
    halted = t >= spec.halt_max_steps
    if (training or adaptive) and spec.halt_max_steps > 1:
      q_says_halt = (readout.q_halt > 0 if spec.no_ACT_continue
                     else readout.q_halt > readout.q_continue)
      halted = halted | jax.lax.stop_gradient(q_says_halt)
    if training and spec.halt_max_steps > 1 and spec.halt_exploration_prob > 0:
      explore_rng, steps_rng = jax.random.split(rng)
      explore = jax.random.uniform(explore_rng, t.shape) < spec.halt_exploration_prob
      min_steps = jax.random.randint(steps_rng, t.shape, 2, spec.halt_max_steps + 1)
      halted = halted & (t >= jnp.where(explore, min_steps, 0))
    return halted

  def forward_passes(self, spec):
    return self.passes(spec)

  def has_halting_head(self, spec):
    return True  # the Q head

  def answer_logits(self, params, rows, spec, carry):
    del rows
    y = model_lib.reset_latents(params, spec, carry).y
    return model_lib.merge(spec, params).heads(y)[0]


recursion.register(TRM())
