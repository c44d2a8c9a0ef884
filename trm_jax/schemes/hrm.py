"""HRM (Wang et al. 2025; sapientinc/HRM), as `models/recursive_reasoning/hrm.py` of the official
TRM repository runs it (`HierarchicalReasoningModel_ACTV1` with `ACTLossHead`).

Against TRM: two networks, a low level L (`num_layers` blocks, the official `L_layers`) and a
high level H (`scheme_options.h_layers` blocks, the official `H_layers`). One supervision step
runs H_cycles x L_cycles updates of z_L from (z_H + x) and H_cycles updates of z_H from z_L,
all without gradient except the last z_L and the last z_H update (the one-step gradient); the
heads read z_H. HRM always trains the Q-continue head with the bootstrapped target
(`no_ACT_continue` must be False) and halts on q_halt > q_continue with exploration, exactly as
TRM's scheme does with that setting, so loss, halting and the target are TRM's.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from trm_jax import nn, recursion, schemes
from trm_jax.config import ModelSpec
from trm_jax.schemes.trm import TRM


class HRMModel(nn.TinyRecursiveModel):
  """TRM's embeddings, heads and initial latents, `net` as the L level and `h_net` as H."""

  def __init__(self, spec: ModelSpec, *, h_layers: int, rngs: nnx.Rngs):
    super().__init__(spec, rngs=rngs)
    h_spec = dataclasses.replace(spec, num_layers=h_layers)
    self.h_net = nn.ReasoningNet(h_spec, rngs=rngs)


def hrm_recursion(spec, l_net, h_net, l_params, h_params, latents, x, *, on_y=None):
  """z_H = latents.y, z_L = latents.z. Returns the new latents (and, with `on_y`, the readouts
  after each z_H update stacked)."""
  H, L = spec.H_cycles, spec.L_cycles
  frozen_l, frozen_h, frozen_x = jax.lax.stop_gradient((l_params, h_params, x))
  z_H, z_L = jax.lax.stop_gradient(tuple(latents))
  trace = []
  for h in range(H):
    for l in range(L):
      if not (h == H - 1 and l == L - 1):
        z_L = l_net(frozen_l, z_L, z_H + frozen_x)
    if h != H - 1:
      z_H = h_net(frozen_h, z_H, z_L)
      if on_y is not None:
        trace.append(on_y(z_H))
  z_L = l_net(l_params, z_L, z_H + x)
  z_H = h_net(h_params, z_H, z_L)
  latents = recursion.Latents(z_H, z_L)
  if on_y is None:
    return latents
  trace.append(on_y(z_H))
  return latents, jnp.stack(trace)


@schemes.register
class HRM(TRM):
  name = "hrm"
  official = recursion.Official(
      "recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1",
      # The official config class has no puzzle_emb_len (the ceil-div prefix) and always trains
      # the Q-continue head; its H_layers is our h_layers.
      implied={"puzzle_emb_len": 0, "no_ACT_continue": False}, options={"H_layers": "h_layers"},
      levels={"L": "net", "H": "h_net"})
  recur = staticmethod(hrm_recursion)

  @dataclasses.dataclass(frozen=True)
  class Options:
    h_layers: int = 4

  def check(self):
    if self.spec.no_ACT_continue:
      raise ValueError("model config field 'no_ACT_continue' = True: HRM always trains the "
                       "Q-continue head; set it to False")

  def build(self, rngs):
    return HRMModel(self.spec, h_layers=self.opts.h_layers, rngs=rngs)

  def recurse(self, params, latents, x, *, on_y=None):
    return hrm_recursion(self.spec, self.network(), self.network("h_net"), params["net"],
                         params["h_net"], latents, x, on_y=on_y)
