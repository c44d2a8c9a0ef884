"""TRM (Jolicoeur-Martineau 2025), as the official code runs it.

One supervision step: T-1 latent cycles without gradient, one with (each cycle n z-updates and
one y-update of the shared net), then the heads. Supervised with the labels (stablemax CE) and
a Q halting head (BCE on "is the sequence correct", plus the bootstrapped Q-continue target when
`no_ACT_continue` is off). Halts when the Q head says so in training (with exploration), after
N_sup steps at evaluation (or on the Q head with adaptive evaluation).
"""

from __future__ import annotations

import functools
import inspect

import jax
import jax.numpy as jnp

from trm_jax import losses, nn, recursion, schemes
from trm_jax.recursion import Latents, Readout


@schemes.register
class TRM(recursion.Scheme):
  name = "trm"
  official = recursion.Official("recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1")
  # The latent recursion of one step, and the network calls it makes (`register_scheme` makes
  # subclasses with others).
  recur = staticmethod(recursion.trm_recursion)
  passes = staticmethod(lambda spec: spec.H_cycles * (spec.L_cycles + 1))

  @classmethod
  def with_recursion(cls, name, recur, passes):
    """This scheme with another latent recursion (`schemes.register_scheme`)."""
    return type(f"{cls.__name__}_{name}", (cls,), {
        "name": name, "recur": staticmethod(recur), "passes": staticmethod(passes),
        "official": None, "__module__": getattr(recur, "__module__", cls.__module__)})

  def build(self, rngs):
    return nn.TinyRecursiveModel(self.spec, rngs=rngs)

  def initial_carry(self, batch_size):
    spec = self.spec
    shape = (batch_size, spec.total_len, spec.hidden_size)
    return {"y": jnp.zeros(shape, spec.jnp_compute_dtype),
            "z": jnp.zeros(shape, spec.jnp_compute_dtype)}

  def metrics(self):
    return {**super().metrics(), "accuracy": "per_finished", "q_halt_accuracy": "per_finished",
            "steps": "per_finished", "q_halt_loss": "per_row", "q_continue_loss": "per_row"}

  def capabilities(self):
    caps = super().capabilities() | {"halting_head"}  # the Q head
    return caps | ({"update_trace"} if self.traces_updates else set())

  @functools.cached_property
  def traces_updates(self) -> bool:
    """Whether the recursion reads out after each y update (it takes `on_y`)."""
    return "on_y" in inspect.signature(self.recur).parameters

  def start(self, params, carry) -> Latents:
    """The carry's (y, z), with rows flagged `reset` at the initial latents."""
    cdt = self.spec.jnp_compute_dtype
    reset = carry["reset"][:, None, None]
    return Latents(jnp.where(reset, params["y_init"].astype(cdt)[None, None], carry["y"]),
                   jnp.where(reset, params["z_init"].astype(cdt)[None, None], carry["z"]))

  def step(self, params, rows, carry, data, t, rng, *, training, record=False):
    del rng  # the recursion is deterministic; halting draws its own randomness
    model = self.module(params)
    latents = self.start(params, carry)
    x = self.embed(model, rows, carry, data, t)
    trace = None
    if record and self.traces_updates:
      latents, trace = self.recurse(params, latents, x, on_y=lambda y: model.heads(y)[0])
    else:
      latents = self.recurse(params, latents, x)
    logits, q_halt, q_continue = model.heads(latents.y)
    new_carry = self.next_carry(carry, latents, logits)
    extras = self.q_continue_target(params, rows, new_carry, data, t, training)
    return new_carry, Readout(logits, q_halt, q_continue, trace, extras)

  def embed(self, model, rows, carry, data, t):
    """The step's input embedding x (subclasses change what the step is conditioned on)."""
    return model.embed(data["inputs"], rows)

  def next_carry(self, carry, latents, logits):
    """The detached carry after the step (subclasses add what they track per row)."""
    return dict(carry, y=jax.lax.stop_gradient(latents.y), z=jax.lax.stop_gradient(latents.z))

  def q_continue_target(self, params, rows, new_carry, data, t, training):
    """{'target_q_continue'} when the continue head is trained: the bootstrapped target from one
    more (no-grad) step, as in the official code (PQN-style); else {}."""
    spec = self.spec
    if not training or spec.no_ACT_continue or spec.halt_max_steps <= 1:
      return {}
    frozen_params, frozen_rows = jax.lax.stop_gradient((params, rows))
    next_carry = dict(new_carry, reset=jnp.zeros_like(new_carry["reset"]))
    _, after = self.step(frozen_params, frozen_rows, next_carry, data, t + 1, None,
                         training=False)
    return {"target_q_continue": jax.nn.sigmoid(jnp.where(
        t >= spec.halt_max_steps, after.q_halt, jnp.maximum(after.q_halt, after.q_continue)))}

  def recurse(self, params, latents, x, *, on_y=None):
    """The latent recursion of one step (with `on_y`: also the readouts after each y update)."""
    net = self.network()
    if on_y is None:
      return self.recur(self.spec, net, params["net"], latents, x)
    return self.recur(self.spec, net, params["net"], latents, x, on_y=on_y)

  def loss(self, readout, targets, carry, data, halted):
    return losses.act_loss(readout.logits, readout.q_halt, readout.q_continue, targets, halted,
                           carry["steps"], self.spec.loss_type,
                           readout.extras.get("target_q_continue"))

  def halted(self, readout, t, rng, *, training, adaptive=False):
    """Training halts a row when its Q head says so (`q_halt > 0`, or `q_halt > q_continue`
    with the continue head), never before a per-sample minimum drawn with probability
    `halt_exploration_prob` from U{2..N_sup}. Evaluation runs all N_sup steps unless
    `adaptive`, which halts on the Q head without exploration."""
    spec = self.spec
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

  def forward_passes(self):
    return self.passes(self.spec)

  def answer_logits(self, params, rows, carry):
    del rows
    return self.module(params).heads(self.start(params, carry).y)[0]
