"""Recursion schemes: how one supervision step refines the latents (y, z).

A scheme is a pure function

    recur(spec, net, net_params, latents, x) -> latents

where `net(net_params, h, injection)` is one call of the shared network and `x` is the input
embedding. It never sees optimisers, data or the ACT loop, so a new scheme (HRM-style, a
different no-grad split, ...) is one function registered under a name:

    @recursion.register_scheme("mine", forward_passes=lambda spec: 2 * spec.L_cycles)
    def mine(spec, net, net_params, latents, x): ...

and selected with `model_config.scheme = "mine"`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax

from trm_jax.config import ModelSpec


class Latents(NamedTuple):
  y: jax.Array  # the answer state (official z_H)  [B, S, D]
  z: jax.Array  # the reasoning state (official z_L) [B, S, D]


NetFn = Callable[[Any, jax.Array, jax.Array], jax.Array]
RecurFn = Callable[[ModelSpec, NetFn, Any, Latents, jax.Array], Latents]


@dataclasses.dataclass(frozen=True)
class Scheme:
  name: str
  recur: RecurFn
  forward_passes: Callable[[ModelSpec], int]  # network calls per supervision step


_SCHEMES: dict[str, Scheme] = {}


def register_scheme(name: str, *, forward_passes: Callable[[ModelSpec], int]):
  def decorate(recur: RecurFn) -> RecurFn:
    if name in _SCHEMES and _SCHEMES[name].recur is not recur:
      raise ValueError(f"recursion scheme '{name}' is already registered")
    _SCHEMES[name] = Scheme(name, recur, forward_passes)
    return recur
  return decorate


def registered_schemes() -> dict[str, Scheme]:
  return dict(_SCHEMES)


def get_scheme(name: str) -> Scheme:
  try:
    return _SCHEMES[name]
  except KeyError:
    raise ValueError(f"unknown recursion scheme '{name}'; registered: {sorted(_SCHEMES)}") from None


def latent_cycle(spec: ModelSpec, net: NetFn, net_params, latents: Latents,
                 x: jax.Array, *, unroll: bool = False) -> Latents:
  """n updates of z from (y + x), then one update of y from z.

  `unroll`: a Python loop instead of `fori_loop`. Use it where gradients flow: autodiff of a
  loop stacks every iteration's residuals into [n, ...] buffers (a copy in, a copy out) that
  an unrolled body does not need (BUILD_NOTES.md, "CPU speed").
  """
  y, z = latents
  injection = y + x
  if unroll:
    for _ in range(spec.L_cycles):
      z = net(net_params, z, injection)
  else:
    z = jax.lax.fori_loop(0, spec.L_cycles, lambda _, z: net(net_params, z, injection), z)
  y = net(net_params, y, z)
  return Latents(y, z)


@register_scheme("trm", forward_passes=lambda spec: spec.H_cycles * (spec.L_cycles + 1))
def trm(spec: ModelSpec, net: NetFn, net_params, latents: Latents, x: jax.Array) -> Latents:
  """T-1 cycles with no backward pass at all, then one cycle that carries gradient.

  The no-grad cycles see stop_gradient'ed parameters, latents and inputs, so autodiff builds
  no linearisation for them: they cost forward compute only, as in the official code.
  """
  if spec.H_cycles > 1:
    frozen_params, frozen_x = jax.lax.stop_gradient((net_params, x))
    latents = jax.lax.stop_gradient(latents)
    latents, _ = jax.lax.scan(
        lambda c, _: (latent_cycle(spec, net, frozen_params, c, frozen_x), None),
        latents, None, length=spec.H_cycles - 1)
  return latent_cycle(spec, net, net_params, latents, x, unroll=True)
