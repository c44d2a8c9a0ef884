"""The recursion-scheme contract: everything in which TRM, DIS, HRM, ... differ, one file each.

A scheme owns, under its own name:
  build          its modules and their init (an NNX module; `nn.TinyRecursiveModel` by default)
  initial_carry  its per-row carry (latents and whatever else it tracks per row)
  refresh        how rows that take a new example reset their part of the carry
  step           one supervision step given the step index t (1-based, per row) and an rng,
                 returning the new carry and a `Readout` (logits, halting logits, and on request
                 the logits after every y update)
  targets        what step t is supervised with (TRM: the labels; DIS: frame t of its path)
  loss           the step's loss and metrics (sums over the batch)
  halted         its halting rule
  forward_passes network calls per supervision step
  answer_logits  the readout of the carry's answer state before a step (the reference readout
                 l_u of policy-improvement analysis and guided inference)
  feed_back      what the carry takes from a step's committed logits (DIS: the argmax it feeds
                 back as the next input; TRM: nothing), for inference that commits other logits
                 (guidance)
  unconditioned  the carry with the step's conditioning dropped (DIS: no puzzle), for
                 classifier-free guidance; None where the scheme has no (trained) such mode
  has_halting_head  whether evaluation may halt on a trained head (halt='q')
The ACT bookkeeping (act.py), the training loop (train.py, main.py), evaluation, checkpoints,
sharding and conversion see only this contract; the generic carry keys `steps` (supervision steps
taken by each row's current example) and `reset` (rows restarting at the next step) are kept by
act.py, the rest of the carry belongs to the scheme.

A new scheme is one file: subclass `Scheme` (or `schemes.trm.TRM`, to change only the recursion)
and `register` an instance; select it with `model_config.scheme = name`. For the common case
of a different latent recursion inside TRM's step, `register_scheme` turns one function into a
scheme:

    @recursion.register_scheme("mine", forward_passes=lambda spec: 2 * spec.L_cycles)
    def mine(spec, net, net_params, latents, x): ...   # -> Latents
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from trm_jax.config import ModelSpec

Carry = dict[str, Any]
Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]

# Built-in schemes, imported on first lookup (they import the model modules, which import this).
BUILTIN = {"trm": "trm_jax.schemes.trm", "dis": "trm_jax.schemes.dis",
           "hrm": "trm_jax.schemes.hrm", "trm_singlez": "trm_jax.schemes.trm_singlez",
           "rlrp": "trm_jax.schemes.rlrp"}


class Latents(NamedTuple):
  y: jax.Array  # the answer state (official z_H)  [B, S, D]
  z: jax.Array  # the reasoning state (official z_L) [B, S, D]


class Readout(NamedTuple):
  """What one supervision step shows: fp32 token logits [B, L, V] after its last y update,
  halting logits [B] (zeros where a scheme has no halting head), the logits after each y update
  [U, B, L, V] when recorded (else None), and outputs the scheme's own loss needs."""

  logits: jax.Array
  q_halt: jax.Array
  q_continue: jax.Array
  trace: jax.Array | None = None
  extras: Mapping[str, jax.Array] = {}


NetFn = Callable[[Any, jax.Array, jax.Array], jax.Array]
RecurFn = Callable[..., Latents]


class Scheme:
  """Base class: TRM's modules and carry, no halting head semantics. See the module docstring."""

  name: str = ""
  # The scheme's own settings: name -> allowed values, the first the default (for a published
  # method, the official code's behaviour); an int default admits any positive integer, a
  # float default any number in [0, 1] (a probability).
  options: Mapping[str, tuple] = {}

  def option(self, spec: ModelSpec, name: str):
    return spec.options.get(name, self.options[name][0])

  def validate(self, spec: ModelSpec) -> None:
    """Raises ValueError naming a model-config field this scheme cannot run with."""
    for name, value in spec.scheme_options:
      if name not in self.options:
        raise ValueError(f"model config field 'scheme_options.{name}': scheme '{self.name}' has "
                         f"{'options ' + str(sorted(self.options)) if self.options else 'none'}")
      default = self.options[name][0]
      if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
          raise ValueError(f"model config field 'scheme_options.{name}' = {value!r}: must be a "
                           "number in [0, 1]")
      elif isinstance(default, int) and not isinstance(default, bool):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
          raise ValueError(f"model config field 'scheme_options.{name}' = {value!r}: must be a "
                           "positive integer")
      elif value not in self.options[name]:
        raise ValueError(f"model config field 'scheme_options.{name}' = {value!r}: must be one "
                         f"of {self.options[name]}")

  def build(self, spec: ModelSpec, rngs: nnx.Rngs) -> nnx.Module:
    from trm_jax import nn
    return nn.TinyRecursiveModel(spec, rngs=rngs)

  def initial_carry(self, spec: ModelSpec, batch_size: int) -> Carry:
    shape = (batch_size, spec.total_len, spec.hidden_size)
    return {"y": jnp.zeros(shape, spec.jnp_compute_dtype),
            "z": jnp.zeros(shape, spec.jnp_compute_dtype)}

  def refresh(self, spec: ModelSpec, carry: Carry, fresh: jax.Array, batch: Batch,
              rng: jax.Array) -> Carry:
    """Rows where `fresh` took a new example from `batch` (latents restart through `reset`)."""
    del spec, fresh, batch, rng
    return carry

  def step(self, params, rows, spec: ModelSpec, carry: Carry, data: Batch, t: jax.Array,
           rng: jax.Array | None, *, training: bool, record: bool = False
           ) -> tuple[Carry, Readout]:
    raise NotImplementedError

  def targets(self, spec: ModelSpec, carry: Carry, data: Batch) -> jax.Array:
    return data["labels"]

  def loss(self, spec: ModelSpec, readout: Readout, targets: jax.Array, carry: Carry,
           data: Batch, halted: jax.Array) -> tuple[jax.Array, Metrics]:
    """(summed loss, metrics summed over the batch). The training loop reads `count` (rows
    that finished), `lm_loss` and `exact_accuracy`; `*loss` and `target_*` metrics are reduced
    per row of the batch, the others per finished row, and a `steps` metric (supervision steps of
    the finished rows) yields the measured forward passes per example."""
    raise NotImplementedError

  def halted(self, spec: ModelSpec, readout: Readout, t: jax.Array, rng: jax.Array | None, *,
             training: bool, adaptive: bool = False) -> jax.Array:
    """Fixed N_sup steps; schemes with a halting head override this."""
    del readout, rng, training, adaptive
    return t >= spec.halt_max_steps

  def forward_passes(self, spec: ModelSpec) -> int:
    raise NotImplementedError

  def has_halting_head(self, spec: ModelSpec) -> bool:
    """Whether `halted(..., adaptive=True)` reads a trained halting head (evaluation halt='q')."""
    del spec
    return False

  def answer_logits(self, params, rows, spec: ModelSpec, carry: Carry) -> jax.Array:
    """fp32 logits [B, L, V] of the carry's answer state as the next step will start from it
    (rows flagged `reset`: the initial state)."""
    raise NotImplementedError

  def feed_back(self, spec: ModelSpec, carry: Carry, logits: jax.Array) -> Carry:
    """The carry after a step whose committed logits are `logits` (default: unchanged)."""
    del spec, logits
    return carry

  def unconditioned(self, spec: ModelSpec, carry: Carry) -> Carry | None:
    """The carry whose next step runs without its conditioning (None: no such mode)."""
    del spec, carry
    return None


_SCHEMES: dict[str, Scheme] = {}


def register(scheme: Scheme | type) -> Scheme | type:
  """Registers a scheme instance (or, as a class decorator, an instance of the class)."""
  instance = scheme() if isinstance(scheme, type) else scheme
  if not instance.name:
    raise ValueError(f"{type(instance).__name__} has no name")
  if instance.name in _SCHEMES and type(_SCHEMES[instance.name]) is not type(instance):
    raise ValueError(f"recursion scheme '{instance.name}' is already registered")
  _SCHEMES[instance.name] = instance
  return scheme


def register_scheme(name: str, *, forward_passes: Callable[[ModelSpec], int]):
  """Decorator: `recur(spec, net, net_params, latents, x) -> Latents` as a TRM-style scheme
  (TRM's modules, carry, loss and halting; this recursion inside its step)."""
  from trm_jax.schemes import trm

  def decorate(recur: RecurFn) -> RecurFn:
    previous = _SCHEMES.get(name)
    if previous is not None and getattr(previous, "recur_fn", None) is not recur:
      raise ValueError(f"recursion scheme '{name}' is already registered")
    _SCHEMES[name] = trm.TRM(name=name, recur=recur, passes=forward_passes)
    return recur
  return decorate


def registered_schemes() -> dict[str, Scheme]:
  for module in BUILTIN.values():
    importlib.import_module(module)
  return dict(_SCHEMES)


def get_scheme(name: str) -> Scheme:
  if name not in _SCHEMES and name in BUILTIN:
    importlib.import_module(BUILTIN[name])
  try:
    return _SCHEMES[name]
  except KeyError:
    raise ValueError(f"unknown recursion scheme '{name}'; registered: "
                     f"{sorted(registered_schemes())}") from None


# ------------------------------------------------------------------------- shared pieces --


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


def trm_recursion(spec: ModelSpec, net: NetFn, net_params, latents: Latents, x: jax.Array,
                  *, on_y=None) -> Latents:
  """T-1 cycles with no backward pass at all, then one cycle that carries gradient.

  The no-grad cycles see stop_gradient'ed parameters, latents and inputs, so autodiff builds
  no linearisation for them: they cost forward compute only, as in the official code.
  `on_y(y)`, if given, is called with y after each of the T updates (readout tracing) and its
  results are returned stacked as a second value.
  """
  trace = []
  if spec.H_cycles > 1:
    frozen_params, frozen_x = jax.lax.stop_gradient((net_params, x))
    latents = jax.lax.stop_gradient(latents)

    def cycle(c, _):
      c = latent_cycle(spec, net, frozen_params, c, frozen_x)
      return c, (None if on_y is None else on_y(c.y))

    latents, early = jax.lax.scan(cycle, latents, None, length=spec.H_cycles - 1)
    if on_y is not None:
      trace.append(early)
  latents = latent_cycle(spec, net, net_params, latents, x, unroll=True)
  if on_y is None:
    return latents
  trace.append(on_y(latents.y)[None])
  return latents, jnp.concatenate(trace, axis=0)
