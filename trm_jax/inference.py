"""Inference strategies: how a trained model is run on a batch, with its forward passes counted.

A `Strategy` (the experiment config's `eval` section: `guidance_w`, `guidance`, `halt`,
`converge_k`, `max_steps`):

  guidance_w  guided inference (../shared/spec/POLICY_IMPROVEMENT.md): each supervision step
              commits `l_w = l_u + w (l_c - l_u)` with l_c the step's own readout. w = 1 is plain
              inference (and, with guidance 'step', takes exactly its code path); w > 1
              extrapolates along l_c - l_u, w < 1 damps it. The committed logits give the step's
              prediction and, for schemes that feed their prediction back (DIS), the next step's
              input (`Scheme.feed_back`).
  guidance    what l_u is. "step": the readout of the answer state the step started from
              (`Scheme.answer_logits`; step 1: the initial state), the policy-improvement view.
              "cfg": classifier-free guidance, the readout of the same step run again from the
              same carry without its conditioning (`Scheme.unconditioned`; DIS trained with
              `scheme_options.cfg_dropout` > 0); twice the forward passes per step.
  max_steps   a budget of supervision steps (0: N_sup): no row runs more;
  halt        "fixed": every row runs the budget;
              "q": a row stops when the scheme's learned halting head says so (TRM's Q head;
                   refused for schemes without one, e.g. DIS);
              "converged": a row stops once its committed prediction has not changed for
                   `converge_k` consecutive steps (needs no head; any scheme).
A stopped row keeps the prediction of its halting step. Forward passes are counted per row:
steps taken x the scheme's network calls per step.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp

from trm_jax import act, losses
from trm_jax import model as model_lib
from trm_jax.config import ModelSpec

HALT_RULES = ("fixed", "q", "converged")
GUIDANCE = ("step", "cfg")


@dataclasses.dataclass(frozen=True)
class Strategy:
  guidance_w: float = 1.0
  guidance: str = "step"
  halt: str = "fixed"
  converge_k: int = 1
  max_steps: int = 0

  @classmethod
  def from_config(cls, eval_cfg) -> "Strategy":
    strategy = cls(guidance_w=float(eval_cfg.get("guidance_w", 1.0)),
                   guidance=eval_cfg.get("guidance", "step"), halt=eval_cfg.get("halt", "fixed"), converge_k=eval_cfg.get("converge_k", 1),
                   max_steps=eval_cfg.get("max_steps", 0))
    strategy.validate()
    return strategy

  def validate(self, spec: ModelSpec | None = None) -> None:
    """Raises ValueError naming the eval config field."""
    if self.guidance not in GUIDANCE:
      raise ValueError(f"config field 'eval.guidance' = {self.guidance!r}: must be one of "
                       f"{GUIDANCE}")
    if self.halt not in HALT_RULES:
      raise ValueError(f"config field 'eval.halt' = {self.halt!r}: must be one of {HALT_RULES}")
    k = self.converge_k
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
      raise ValueError(f"config field 'eval.converge_k' = {k!r}: must be a positive integer")
    if not jnp.isfinite(self.guidance_w):
      raise ValueError(f"config field 'eval.guidance_w' = {self.guidance_w!r}: must be finite")
    m = self.max_steps
    if not isinstance(m, int) or isinstance(m, bool) or m < 0:
      raise ValueError(f"config field 'eval.max_steps' = {m!r}: must be a non-negative integer "
                       "(0: N_sup)")
    if spec is not None and m > spec.halt_max_steps:
      raise ValueError(f"config field 'eval.max_steps' = {m}: exceeds the model's N_sup "
                       f"(halt_max_steps = {spec.halt_max_steps})")
    if spec is not None and self.guidance == "cfg":
      scheme = model_lib.scheme_of(spec)
      if scheme.unconditioned(spec, model_lib.initial_carry(spec, 1)) is None:
        raise ValueError(f"config field 'eval.guidance' = 'cfg': scheme '{scheme.name}' has no "
                         "unconditioned mode")
    if spec is not None and self.halt == "q":
      scheme = model_lib.scheme_of(spec)
      if not scheme.has_halting_head(spec):
        raise ValueError(f"config field 'eval.halt' = 'q': scheme '{scheme.name}' trains no "
                         "halting head here (DIS: scheme_options.halting='learned'); use "
                         "'fixed' or 'converged'")

  def steps(self, spec: ModelSpec) -> int:
    """The budget of supervision steps."""
    return self.max_steps or spec.halt_max_steps

  def passes_per_step(self, spec: ModelSpec) -> int:
    """Network calls per supervision step (classifier-free guidance runs each step twice)."""
    return model_lib.scheme_of(spec).forward_passes(spec) * (2 if self.guidance == "cfg" else 1)

  def describe(self) -> str:
    budget = (f"{self.max_steps} step{'s' * (self.max_steps > 1)}" if self.max_steps
              else "N_sup")
    halt = {"fixed": f"fixed {budget}", "q": f"Q-head halting, at most {budget}",
            "converged": f"halt when unchanged for {self.converge_k} step(s), at most "
                         f"{budget}"}[self.halt]
    guide = "CFG " if self.guidance == "cfg" else ""
    return f"{guide}w={self.guidance_w:g}, {halt}"


def guided(l_u: jax.Array, l_c: jax.Array, w: float) -> jax.Array:
  """l_u + w (l_c - l_u); exactly l_c for w = 1."""
  return l_c if w == 1.0 else l_u + w * (l_c - l_u)


def eval_batch(params: model_lib.Params, batch: Mapping[str, jax.Array], *, spec: ModelSpec,
               strategy: Strategy = Strategy()) -> dict[str, jax.Array]:
  """Run a batch from fresh latents for up to the strategy's budget of steps (N_sup by default).

  Returns per-row arrays: `token_acc` / `exact` [budget, B] of the committed prediction after
  each step (a row that stopped keeps its prediction), `preds` [B, L] and `q_halt` [B] at the
  halting step, `steps` [B] (supervision steps the row used; forward passes = steps x
  `strategy.passes_per_step`).
  """
  scheme = model_lib.scheme_of(spec)
  state = act.refresh(spec, act.initial_state(spec, batch), batch, jax.random.key(0))
  labels = batch["labels"]
  rows = model_lib.puzzle_rows(params, batch["puzzle_identifiers"])
  B = labels.shape[0]
  mask = labels != losses.IGNORE_LABEL_ID
  counts = jnp.maximum(mask.sum(-1), 1)
  w = strategy.guidance_w
  cfg = strategy.guidance == "cfg"

  def one_step(carry, _):
    state, l_u, done, preds, last, stable, q_halt, steps = carry
    if cfg:  # the same step without its conditioning, from the same carry
      _, unconditioned = model_lib.step(params, rows, spec,
                                        scheme.unconditioned(spec, state["carry"]),
                                        state["data"], training=False)
      l_u = unconditioned.logits
    state, readout = act.advance(params, rows, spec, state, training=False,
                                 adaptive_eval=strategy.halt == "q")
    committed = guided(l_u, readout.logits, w)
    if w != 1.0:
      state = dict(state, carry=scheme.feed_back(spec, state["carry"], committed))
    new_preds = jnp.argmax(committed, axis=-1).astype(jnp.int32)
    stable = jnp.where(jnp.all(new_preds == last, axis=-1), stable + 1, 0)
    halted = state["halted"]
    if strategy.halt == "converged":
      halted = halted | (stable >= strategy.converge_k)
    preds = jnp.where(done[:, None], preds, new_preds)
    q_halt = jnp.where(done, q_halt, readout.q_halt)
    steps = jnp.where(done, steps, state["carry"]["steps"])
    done = done | halted
    correct = (preds == labels) & mask
    per_step = (correct.sum(-1) / counts, correct.sum(-1) == mask.sum(-1))
    l_u = readout.logits if l_u is not None and not cfg else None
    return (state, l_u, done, preds, new_preds, stable, q_halt, steps), per_step

  # The initial state's readout: the reference of step 1 under guidance, and the prediction a
  # first step "did not change" under convergence halting. Plain inference never reads it.
  l_0, last = None, jnp.full(labels.shape, -1, jnp.int32)
  if (w != 1.0 and not cfg) or strategy.halt == "converged":
    l_0 = scheme.answer_logits(params, rows, spec, state["carry"])
    last = jnp.argmax(l_0, axis=-1).astype(jnp.int32)
  init = (state, l_0 if w != 1.0 and not cfg else None, jnp.zeros((B,), bool),
          jnp.zeros(labels.shape, jnp.int32), last, jnp.zeros((B,), jnp.int32),
          jnp.zeros((B,), jnp.float32), jnp.zeros((B,), jnp.int32))
  (_, _, _, preds, _, _, q_halt, steps), (token_acc, exact) = jax.lax.scan(
      one_step, init, None, length=strategy.steps(spec))
  return {"token_acc": token_acc, "exact": exact, "preds": preds, "q_halt": q_halt,
          "steps": steps}
