"""Single-z TRM: the TRM paper's ablation with one latent, as
`models/recursive_reasoning/trm_singlez.py` of the official TRM repository runs it.

One state z (the official z_L, initialised from `z_init`; there is no y). Each latent cycle is
n updates z <- net(z + x) followed by one update z <- net(z) without the input; the heads read
z. T-1 cycles without gradient, the last with it; loss, halting and Q head are TRM's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from trm_jax import nn, recursion, schemes
from trm_jax.config import ModelSpec
from trm_jax.recursion import Readout
from trm_jax.schemes.trm import TRM


class SingleZModel(nn.TinyRecursiveModel):
  """TRM's modules without the y initial latent."""

  def __init__(self, spec: ModelSpec, *, rngs: nnx.Rngs):
    super().__init__(spec, rngs=rngs)
    del self.y_init


def single_z_cycle(spec, net, net_params, z, x, *, unroll: bool = False):
  zero = jnp.zeros_like(x)
  if unroll:
    for _ in range(spec.L_cycles):
      z = net(net_params, z, x)
  else:
    z = jax.lax.fori_loop(0, spec.L_cycles, lambda _, z: net(net_params, z, x), z)
  return net(net_params, z, zero)


@schemes.register
class SingleZ(TRM):
  name = "trm_singlez"
  official = recursion.Official(
      "recursive_reasoning.trm_singlez@TinyRecursiveReasoningModel_ACTV1", primary=False)

  def build(self, rngs):
    return SingleZModel(self.spec, rngs=rngs)

  def initial_carry(self, batch_size):
    spec = self.spec
    return {"z": jnp.zeros((batch_size, spec.total_len, spec.hidden_size),
                           spec.jnp_compute_dtype)}

  def capabilities(self):
    return super().capabilities() | {"update_trace"}

  def step(self, params, rows, carry, data, t, rng, *, training, record=False):
    del rng
    spec = self.spec
    model = self.module(params)
    z = self.start(params, carry)
    x = model.embed(data["inputs"], rows)
    net = self.network()
    trace = []
    if spec.H_cycles > 1:
      frozen_params, frozen_x = jax.lax.stop_gradient((params["net"], x))

      def cycle(z, _):
        z = single_z_cycle(spec, net, frozen_params, z, frozen_x)
        return z, (model.heads(z)[0] if record else None)

      z, early = jax.lax.scan(cycle, jax.lax.stop_gradient(z), None, length=spec.H_cycles - 1)
      trace.append(early)
    z = single_z_cycle(spec, net, params["net"], z, x, unroll=True)
    logits, q_halt, q_continue = model.heads(z)
    new_carry = dict(carry, z=jax.lax.stop_gradient(z))
    extras = self.q_continue_target(params, rows, new_carry, data, t, training)
    trace = jnp.concatenate([*trace, logits[None]], axis=0) if record else None
    return new_carry, Readout(logits, q_halt, q_continue, trace, extras)

  def start(self, params, carry):
    """The carry's z, rows flagged `reset` at the initial latent."""
    z_init = params["z_init"].astype(self.spec.jnp_compute_dtype)[None, None]
    return jnp.where(carry["reset"][:, None, None], z_init, carry["z"])

  def answer_logits(self, params, rows, carry):
    del rows
    return self.module(params).heads(self.start(params, carry))[0]
