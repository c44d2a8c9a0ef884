"""Inference strategies: how a trained model is run on a batch, with its forward passes counted.

A `Strategy` (the experiment config's `eval` section: `guidance_w`, `halt`, `converge_k`):

  guidance_w  guided inference (../shared/spec/POLICY_IMPROVEMENT.md): each supervision step
              commits `l_w = l_u + w (l_c - l_u)`, with l_u the readout of the answer state the
              step started from (`Scheme.answer_logits`; step 1: the initial state) and l_c the
              step's own readout. w = 1 is plain inference (and takes exactly its code path);
              w > 1 extrapolates along the step's improvement, w < 1 damps it. The committed
              logits give the step's prediction and, for schemes that feed their prediction back
              (DIS), the next step's input (`Scheme.feed_back`).
  halt        "fixed": every row runs N_sup supervision steps;
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


@dataclasses.dataclass(frozen=True)
class Strategy:
  guidance_w: float = 1.0
  halt: str = "fixed"
  converge_k: int = 1

  @classmethod
  def from_config(cls, eval_cfg) -> "Strategy":
    strategy = cls(guidance_w=float(eval_cfg.get("guidance_w", 1.0)),
                   halt=eval_cfg.get("halt", "fixed"), converge_k=eval_cfg.get("converge_k", 1))
    strategy.validate()
    return strategy

  def validate(self, spec: ModelSpec | None = None) -> None:
    """Raises ValueError naming the eval config field."""
    if self.halt not in HALT_RULES:
      raise ValueError(f"config field 'eval.halt' = {self.halt!r}: must be one of {HALT_RULES}")
    k = self.converge_k
    if not isinstance(k, int) or isinstance(k, bool) or k < 1:
      raise ValueError(f"config field 'eval.converge_k' = {k!r}: must be a positive integer")
    if not jnp.isfinite(self.guidance_w):
      raise ValueError(f"config field 'eval.guidance_w' = {self.guidance_w!r}: must be finite")
    if spec is not None and self.halt == "q":
      scheme = model_lib.scheme_of(spec)
      if not scheme.halting_head:
        raise ValueError(f"config field 'eval.halt' = 'q': scheme '{scheme.name}' trains no "
                         "halting head; use 'fixed' or 'converged'")

  def describe(self) -> str:
    halt = {"fixed": "fixed N_sup", "q": "Q-head halting",
            "converged": f"halt when unchanged for {self.converge_k} step(s)"}[self.halt]
    return f"w={self.guidance_w:g}, {halt}"


def guided(l_u: jax.Array, l_c: jax.Array, w: float) -> jax.Array:
  """l_u + w (l_c - l_u); exactly l_c for w = 1."""
  return l_c if w == 1.0 else l_u + w * (l_c - l_u)


def eval_batch(params: model_lib.Params, batch: Mapping[str, jax.Array], *, spec: ModelSpec,
               strategy: Strategy = Strategy()) -> dict[str, jax.Array]:
  """Run a batch from fresh latents for up to N_sup steps under `strategy`.

  Returns per-row arrays: `token_acc` / `exact` [N_sup, B] of the committed prediction after
  each step (a row that stopped keeps its prediction), `preds` [B, L] and `q_halt` [B] at the
  halting step, `steps` [B] (supervision steps the row used; forward passes = steps x the
  scheme's passes per step).
  """
  scheme = model_lib.scheme_of(spec)
  state = act.refresh(spec, act.initial_state(spec, batch), batch, jax.random.key(0))
  labels = batch["labels"]
  rows = model_lib.puzzle_rows(params, batch["puzzle_identifiers"])
  B = labels.shape[0]
  mask = labels != losses.IGNORE_LABEL_ID
  counts = jnp.maximum(mask.sum(-1), 1)
  w = strategy.guidance_w

  def one_step(carry, _):
    state, l_u, done, preds, last, stable, q_halt, steps = carry
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
    l_u = readout.logits if l_u is not None else None
    return (state, l_u, done, preds, new_preds, stable, q_halt, steps), per_step

  # The initial state's readout: the reference of step 1 under guidance, and the prediction a
  # first step "did not change" under convergence halting. Plain inference never reads it.
  l_0, last = None, jnp.full(labels.shape, -1, jnp.int32)
  if w != 1.0 or strategy.halt == "converged":
    l_0 = scheme.answer_logits(params, rows, spec, state["carry"])
    last = jnp.argmax(l_0, axis=-1).astype(jnp.int32)
  init = (state, l_0 if w != 1.0 else None, jnp.zeros((B,), bool),
          jnp.zeros(labels.shape, jnp.int32), last, jnp.zeros((B,), jnp.int32),
          jnp.zeros((B,), jnp.float32), jnp.zeros((B,), jnp.int32))
  (_, _, _, preds, _, _, q_halt, steps), (token_acc, exact) = jax.lax.scan(
      one_step, init, None, length=spec.halt_max_steps)
  return {"token_acc": token_acc, "exact": exact, "preds": preds, "q_halt": q_halt,
          "steps": steps}
