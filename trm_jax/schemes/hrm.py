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

from trm_jax import nn, recursion
from trm_jax import model as model_lib
from trm_jax.config import ModelSpec
from trm_jax.schemes.trm import TRM


class HRMModel(nn.TinyRecursiveModel):
  """TRM's embeddings, heads and initial latents, `net` as the L level and `h_net` as H."""

  def __init__(self, spec: ModelSpec, *, rngs: nnx.Rngs):
    super().__init__(spec, rngs=rngs)
    h_layers = recursion.get_scheme(spec.scheme).option(spec, "h_layers")
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


@dataclasses.dataclass(frozen=True)
class HRM(TRM):
  name: str = "hrm"
  options = {"h_layers": (4,)}

  def validate(self, spec):
    super().validate(spec)
    if spec.no_ACT_continue:
      raise ValueError("model config field 'no_ACT_continue' = True: HRM always trains the "
                       "Q-continue head; set it to False")

  def build(self, spec, rngs):
    return HRMModel(spec, rngs=rngs)

  def recurse(self, params, spec, latents, x, *, on_y=None):
    return hrm_recursion(spec, model_lib.net_fn(spec), model_lib.net_fn(spec, "h_net"),
                         params["net"], params["h_net"], latents, x, on_y=on_y)


recursion.register(HRM())
