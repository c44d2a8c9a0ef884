"""The recursion-scheme contract: everything in which TRM, DIS, HRM, ... differ, one file each.

A scheme is a class; `schemes.bind(spec)` builds it once per model spec, with its options
parsed into the scheme's typed `Options` and validated, and every method reads `self.spec`
and `self.opts`. The contract, smallest first:

Required core
  build(rngs)          its NNX module (parameters, init)
  initial_carry(B)     its per-row state (any pytree of [B, ...] arrays)
  step(params, rows, carry, data, t, rng, *, training, record)
                       one supervision step at step index t (1-based, per row) -> (carry,
                       Readout): fp32 logits, halting logits (zeros without a head), and with
                       `record` the readouts after each update of the step (`trace`)
  loss(readout, targets, carry, data, halted)
                       the step's loss and its metrics (sums over the batch), each declared in
                       `metrics()` with how it reduces
  forward_passes()     network calls per supervision step

Defaults a scheme may override
  refresh(carry, fresh, batch, rng)  rows that take a new example reset their state (default:
                       nothing to reset; `act.py` restarts `steps` and flags `reset`)
  targets(carry, data) what step t is supervised with (default: the labels)
  halted(readout, t, rng, *, training, adaptive)  default: after N_sup steps
  metrics()            metric name -> 'sum' | 'per_row' | 'per_finished' (the base declares
                       `count`, `lm_loss`, `exact_accuracy`, which the training loop reads)
  batch_keys           training fields the scheme reads (in loss, targets or refresh) besides
                       inputs, labels and puzzle identifiers: passed through by the input
                       pipeline, checked against the dataset before anything compiles
                       (`batch_key_shape`: each one's per-row shape and dtype, for `aot`).
                       Inference (evaluation, analysis, solving) gives a step those three only:
                       a user's puzzle has nothing else.
  official             how its checkpoints convert from the official code (convert.py), or None

Optional capabilities (`capabilities()`; inference and analysis ask with `require`)
  halting_head         `halted(..., adaptive=True)` reads a trained halting head (halt='q')
  reference_readout    `answer_logits(params, rows, carry)`: the readout a step starts from
                       (l_u of policy-improvement margins, guidance's unconditioned reference)
  feedback             `feed_back(carry, logits)`: what the carry takes from a step's committed
                       logits (DIS: the argmax it feeds back as the next input)
  unconditioned        `unconditioned(carry)`: the carry whose next step drops its conditioning
                       (classifier-free guidance)
  update_trace         `step(..., record=True)` reads out after every update inside the step;
                       without it the step's own readout is its one traced update
                       (`model.step`), so the per-step analysis, which also needs the
                       reference readout, works without it.

A new scheme is one file: subclass `Scheme` (or `schemes.trm.TRM` to change only the
recursion) and decorate it with `schemes.register`. For a different latent recursion inside
TRM's step, one function is enough (`schemes.register_scheme`); it traces its updates if it
takes `on_y` (see `trm_recursion`).
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, Callable, ClassVar, Literal, Mapping, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from trm_jax.config import ModelSpec

Carry = dict[str, Any]
Batch = Mapping[str, jax.Array]
Metrics = dict[str, jax.Array]

REDUCTIONS = ("sum", "per_row", "per_finished")
CAPABILITIES = {
    "halting_head": "a trained halting head",
    "reference_readout": "the readout of the state a step starts from (answer_logits)",
    "feedback": "a carry that takes the committed prediction (feed_back)",
    "unconditioned": "a trained unconditioned mode (unconditioned)",
    "update_trace": "the readouts after every update inside a step",
}
# The methods behind each method-backed capability: a scheme has it when it defines the method.
_CAPABILITY_METHODS = {"reference_readout": "answer_logits", "feedback": "feed_back",
                       "unconditioned": "unconditioned"}
REMAT_POLICIES = {
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class Latents(NamedTuple):
  y: jax.Array  # the answer state (official z_H)  [B, S, D]
  z: jax.Array  # the reasoning state (official z_L) [B, S, D]


class Readout(NamedTuple):
  """What one supervision step shows: fp32 token logits [B, L, V] after its last update,
  halting logits [B] (zeros where a scheme has no halting head), the logits after each update
  [U, B, L, V] when recorded (else None), and outputs the scheme's own loss needs."""

  logits: jax.Array
  q_halt: jax.Array
  q_continue: jax.Array
  trace: jax.Array | None = None
  extras: Mapping[str, jax.Array] = {}


@dataclasses.dataclass(frozen=True)
class Official:
  """Where a scheme's checkpoints come from in the official code (convert.py): the arch
  `name` (module path under `models.`, '@', model class), the model fields its config class
  implies where the arch dict is silent, official arch keys that are its options, and the
  state-dict keys of its own modules."""

  arch_name: str
  implied: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  options: Mapping[str, str] = dataclasses.field(default_factory=dict)  # official -> ours
  # State-dict keys of the scheme's own modules: official key -> (our path, transposed?); and
  # the official reasoning levels' layers -> our network (`inner.L_level.layers.*` -> `net`).
  keys: Mapping[str, tuple[str, bool]] = dataclasses.field(default_factory=dict)
  levels: Mapping[str, str] = dataclasses.field(default_factory=lambda: {"L": "net"})
  # The scheme an arch name with this class but no (or another) module converts to; False for
  # a class name the official code reuses in another module (single-z TRM's ACTV1).
  primary: bool = True


@dataclasses.dataclass(frozen=True)
class NoOptions:
  pass


NetFn = Callable[[Any, jax.Array, jax.Array], jax.Array]
RecurFn = Callable[..., Latents]


def option_field(default, low: float = 0.0, high: float = 1.0):
  """A float option with its allowed range (plain float options lie in [0, 1])."""
  return dataclasses.field(default=default, metadata={"range": (low, high)})


def parse_options(scheme_cls: type, pairs) -> Any:
  """`model.scheme_options` ((name, value) pairs) as the scheme's typed `Options`: each value
  checked against its field's type (bool; int: positive; float: within its range, [0, 1]
  unless given; Literal: one of its values). Errors name the config field."""
  options_cls = scheme_cls.Options
  fields = {f.name: f for f in dataclasses.fields(options_cls)}
  hints = typing.get_type_hints(options_cls)
  values = {}
  for name, value in pairs:
    field = f"model config field 'scheme_options.{name}'"
    if name not in fields:
      raise ValueError(f"{field}: scheme '{scheme_cls.name}' has "
                       f"{'options ' + str(sorted(fields)) if fields else 'none'}")
    kind = hints[name]
    if typing.get_origin(kind) is Literal:
      if value not in typing.get_args(kind):
        raise ValueError(f"{field} = {value!r}: must be one of {typing.get_args(kind)}")
    elif kind is bool:
      if not isinstance(value, bool) and value not in (0, 1):
        raise ValueError(f"{field} = {value!r}: must be True or False")
      value = bool(value)
    elif kind is int:
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{field} = {value!r}: must be a positive integer")
    elif kind is float:
      low, high = fields[name].metadata.get("range", (0.0, 1.0))
      if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{field} = {value!r}: must be a number in [{low:g}, {high:g}]")
      value = float(value)
    else:
      raise TypeError(f"{scheme_cls.__name__}.Options.{name}: type {kind} is not an option "
                      "type (bool, int, float or Literal[...])")
    values[name] = value
  return options_cls(**values)


class Scheme:
  """A recursion scheme bound to one model spec (see the module docstring)."""

  name: ClassVar[str] = ""
  Options: ClassVar[type] = NoOptions
  batch_keys: ClassVar[tuple[str, ...]] = ()
  official: ClassVar[Official | None] = None

  def __init__(self, spec: ModelSpec):
    self.spec = spec
    self.opts = parse_options(type(self), spec.scheme_options)
    self.check()

  def __repr__(self) -> str:
    return f"<scheme {self.name} {self.opts}>"

  def check(self) -> None:
    """Raises ValueError naming a model-config field this scheme cannot run with."""

  def fail(self, field: str, why: str):
    raise ValueError(f"model config field '{field}' = {getattr(self.spec, field)!r}: {why} "
                     f"(scheme '{self.name}')")

  # --------------------------------------------------------------------- required core --

  def build(self, rngs: nnx.Rngs) -> nnx.Module:
    raise NotImplementedError(f"scheme '{self.name}' defines no build()")

  def initial_carry(self, batch_size: int) -> Carry:
    raise NotImplementedError(f"scheme '{self.name}' defines no initial_carry()")

  def step(self, params, rows, carry: Carry, data: Batch, t: jax.Array, rng: jax.Array | None,
           *, training: bool, record: bool = False) -> tuple[Carry, Readout]:
    raise NotImplementedError(f"scheme '{self.name}' defines no step()")

  def loss(self, readout: Readout, targets: jax.Array, carry: Carry, data: Batch,
           halted: jax.Array) -> tuple[jax.Array, Metrics]:
    raise NotImplementedError(f"scheme '{self.name}' defines no loss()")

  def forward_passes(self) -> int:
    raise NotImplementedError(f"scheme '{self.name}' defines no forward_passes()")

  # ------------------------------------------------------------------------- defaults --

  def refresh(self, carry: Carry, fresh: jax.Array, batch: Batch, rng: jax.Array | None
              ) -> Carry:
    """Rows where `fresh` took a new example from `batch` (`reset` also flags them)."""
    del fresh, batch, rng
    return carry

  def targets(self, carry: Carry, data: Batch) -> jax.Array:
    return data["labels"]

  def halted(self, readout: Readout, t: jax.Array, rng: jax.Array | None, *, training: bool,
             adaptive: bool = False) -> jax.Array:
    """Fixed N_sup steps."""
    del readout, rng, training, adaptive
    return t >= self.spec.halt_max_steps

  def batch_key_shape(self, key: str) -> tuple[tuple[int, ...], Any]:
    """(per-row shape, dtype) of one of `batch_keys`, for programs compiled without data
    (`python -m trm_jax.aot`); default: one int32 per row."""
    del key
    return (), jnp.int32

  def metrics(self) -> dict[str, str]:
    """Every metric `loss` reports -> how the training log reduces its sum over steps and
    rows: 'sum' (as summed), 'per_row' (per row of the batches), 'per_finished' (per row that
    finished, `count`)."""
    return {"count": "sum", "lm_loss": "per_row", "exact_accuracy": "per_finished"}

  # ------------------------------------------------------------ optional capabilities --

  def capabilities(self) -> frozenset[str]:
    """What this scheme, with its options, can do beyond the core."""
    return frozenset(name for name, method in _CAPABILITY_METHODS.items()
                     if getattr(type(self), method, None) is not None)

  def missing_hint(self, capability: str) -> str:
    """How to get `capability` where an option turns it off ('' where nothing does)."""
    del capability
    return ""

  def require(self, capability: str, needed_by: str) -> None:
    """Raises ValueError naming what needs `capability` when this scheme lacks it."""
    if capability not in CAPABILITIES:
      raise ValueError(f"unknown scheme capability {capability!r}; known: {sorted(CAPABILITIES)}")
    if capability not in self.capabilities():
      hint = self.missing_hint(capability)
      raise ValueError(f"{needed_by} needs {CAPABILITIES[capability]}: scheme '{self.name}' "
                       "has none here" + (f" ({hint})" if hint else ""))

  answer_logits: Callable | None = None  # (params, rows, carry) -> fp32 logits [B, L, V]
  feed_back: Callable | None = None      # (carry, committed logits) -> carry
  unconditioned: Callable | None = None  # (carry) -> carry

  # -------------------------------------------------------- the scheme's own modules --

  @functools.cached_property
  def abstract_module(self) -> nnx.Module:
    """`build`'s module as shapes only (no arrays allocated)."""
    return nnx.eval_shape(lambda: self.build(nnx.Rngs(0)))

  @functools.cached_property
  def _graph(self):
    return nnx.graphdef(self.abstract_module)

  @functools.lru_cache(maxsize=None)
  def _network_graph(self, name: str):
    return nnx.graphdef(getattr(self.abstract_module, name))

  def module(self, params) -> nnx.Module:
    """The scheme's module with `params` (inside traced code: rebuilt at trace time only)."""
    return nnx.merge(self._graph, params)

  def network(self, name: str = "net") -> NetFn:
    """`net(net_params, h, injection)`: one call of the module's sub-network `name`, with
    the spec's rematerialisation policy."""
    graph = self._network_graph(name)

    def net(net_params, h, injection):
      return nnx.merge(graph, net_params)(h, injection)

    if self.spec.remat != "none":
      net = jax.checkpoint(net, policy=REMAT_POLICIES[self.spec.remat])
    return net


def check_metrics(scheme: Scheme, metrics: Mapping[str, Any]) -> None:
  """Raises ValueError for a metric `scheme.loss` reports without declaring it (or a declared
  reduction that is not one of REDUCTIONS)."""
  declared = scheme.metrics()
  undeclared = sorted(set(metrics) - set(declared))
  if undeclared:
    raise ValueError(f"scheme '{scheme.name}' reports metric(s) {undeclared} that its "
                     f"metrics() does not declare (declared: {sorted(declared)})")
  bad = {k: v for k, v in declared.items() if v not in REDUCTIONS}
  if bad:
    raise ValueError(f"scheme '{scheme.name}' metrics(): reductions {bad}; each must be one "
                     f"of {REDUCTIONS}")
  missing = sorted({"count", "lm_loss", "exact_accuracy"} - set(metrics))
  if missing:
    raise ValueError(f"scheme '{scheme.name}' loss() does not report {missing}, which the "
                     "training loop reads")


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
