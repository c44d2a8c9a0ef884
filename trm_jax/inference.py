"""Inference strategies: how a trained model is run on a batch, with its forward passes counted.

A `Strategy` is the experiment config's `eval` section (besides its batch size and limit):

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
  rollouts    test-time scaling: K rollouts of every puzzle, each with Gaussian noise of scale
  noise       `noise` added to every floating-point entry of the scheme's carry (its latents)
  pick, seed  after each supervision step (so rollouts part from step 2 on; Probabilistic TRM,
              arXiv 2605.19943), one answer picked per puzzle:
                "q"          the rollout whose halting logit is highest at its last step;
                "vote"       the prediction most rollouts agree on (ties: the lowest rollout);
                "first_halt" the rollout that halts first on its halting head (halt='q'); all
                             K stop there ("Speed is Confidence", arXiv 2601.19085).
              Every rollout's passes are counted.
A stopped row keeps the prediction of its halting step. Forward passes are counted per row:
supervision steps taken (by all its rollouts) x network calls per step.
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
PICKS = ("q", "vote", "first_halt")


@dataclasses.dataclass(frozen=True)
class Strategy:
  guidance_w: float = 1.0
  guidance: str = "step"
  halt: str = "fixed"
  converge_k: int = 1
  max_steps: int = 0
  rollouts: int = 1
  noise: float = 0.0
  pick: str = "q"
  seed: int = 0

  @classmethod
  def from_config(cls, eval_cfg) -> "Strategy":
    if eval_cfg.get("adaptive_halt"):
      raise ValueError("config field 'eval.adaptive_halt' was replaced by 'eval.halt' "
                       "('q': halt on the Q head)")
    defaults = cls()
    values = {f.name: eval_cfg.get(f.name, getattr(defaults, f.name))
              for f in dataclasses.fields(cls)}
    strategy = cls(**dict(values, guidance_w=float(values["guidance_w"]),
                          noise=float(values["noise"])))
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
    r = self.rollouts
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
      raise ValueError(f"config field 'eval.rollouts' = {r!r}: must be a positive integer")
    if not self.noise >= 0:
      raise ValueError(f"config field 'eval.noise' = {self.noise!r}: must be non-negative")
    if self.pick not in PICKS:
      raise ValueError(f"config field 'eval.pick' = {self.pick!r}: must be one of {PICKS}")
    if r > 1 and self.pick == "first_halt" and self.halt != "q":
      raise ValueError("config field 'eval.pick' = 'first_halt': needs eval.halt = 'q'")
    scheme = None if spec is None else model_lib.scheme_of(spec)
    if scheme is not None and r > 1 and self.pick in ("q", "first_halt"):
      scheme.require("halting_head", f"config field 'eval.pick' = {self.pick!r} (else 'vote')")
    if spec is not None and m > spec.halt_max_steps:
      raise ValueError(f"config field 'eval.max_steps' = {m}: exceeds the model's N_sup "
                       f"(halt_max_steps = {spec.halt_max_steps})")
    if scheme is not None and self.guidance == "cfg":
      scheme.require("unconditioned", "config field 'eval.guidance' = 'cfg'")
    if scheme is not None and self.guidance == "step" and self.guidance_w != 1.0:
      scheme.require("reference_readout", f"config field 'eval.guidance_w' = "
                     f"{self.guidance_w!r} (guidance against the readout a step starts from)")
    if scheme is not None and self.halt == "q":
      scheme.require("halting_head", "config field 'eval.halt' = 'q' (else 'fixed' or "
                     "'converged')")

  def steps(self, spec: ModelSpec) -> int:
    """The budget of supervision steps."""
    return self.max_steps or spec.halt_max_steps

  def passes_per_step(self, spec: ModelSpec) -> int:
    """Network calls per supervision step (classifier-free guidance runs each step twice)."""
    return model_lib.scheme_of(spec).forward_passes() * (2 if self.guidance == "cfg" else 1)

  def describe(self) -> str:
    budget = (f"{self.max_steps} step{'s' * (self.max_steps > 1)}" if self.max_steps
              else "N_sup")
    halt = {"fixed": f"fixed {budget}", "q": f"Q-head halting, at most {budget}",
            "converged": f"halt when unchanged for {self.converge_k} step(s), at most "
                         f"{budget}"}[self.halt]
    guide = "CFG " if self.guidance == "cfg" else ""
    scaled = (f", {self.rollouts} rollouts (noise {self.noise:g}, pick {self.pick})"
              if self.rollouts > 1 else "")
    return f"{guide}w={self.guidance_w:g}, {halt}{scaled}"


def guided(l_u: jax.Array, l_c: jax.Array, w: float) -> jax.Array:
  """l_u + w (l_c - l_u); exactly l_c for w = 1."""
  return l_c if w == 1.0 else l_u + w * (l_c - l_u)


def eval_batch(params: model_lib.Params, batch: Mapping[str, jax.Array], *, spec: ModelSpec,
               strategy: Strategy = Strategy(), step_preds: bool = False
               ) -> dict[str, jax.Array]:
  """Run a batch from fresh latents for up to the strategy's budget of steps (N_sup by default).

  Returns per-row arrays: `token_acc` / `exact` [budget, B] of the committed prediction after
  each step (a row that stopped keeps its prediction), `preds` [B, L] and `q_halt` [B] at the
  halting step, `steps` [B] (supervision steps of the answer's rollout) and `cost_steps` [B]
  (supervision steps of all its rollouts: forward passes = cost_steps x
  `strategy.passes_per_step`); with `step_preds` (one rollout only) also the committed
  prediction after each step, [budget, B, L].
  """
  K = strategy.rollouts
  if K == 1:
    out = _rollouts(params, batch, spec, strategy, step_preds)
    return dict(out, cost_steps=out["steps"])
  if step_preds:
    raise ValueError("step_preds: one rollout only")
  B = batch["inputs"].shape[0]
  tiled = {k: jnp.repeat(v, K, axis=0) for k, v in batch.items()}  # rows b*K .. b*K+K-1
  out = _rollouts(params, tiled, spec, strategy)
  per = lambda x: x.reshape((B, K) + x.shape[1:])
  choice = pick_rollout(per(out["preds"]), per(out["q_halt"]), per(out["steps"]), strategy.pick)
  take = lambda x: jnp.take_along_axis(per(x), choice.reshape((B, 1) + (1,) * (x.ndim - 1)),
                                       axis=1)[:, 0]
  steps = per(out["steps"])
  cost = (K * steps.min(axis=1) if strategy.pick == "first_halt" else steps.sum(axis=1))
  per_step = lambda x: jax.vmap(take)(x)  # [S, B*K] -> [S, B]
  return {"token_acc": per_step(out["token_acc"]), "exact": per_step(out["exact"]),
          "preds": take(out["preds"]), "q_halt": take(out["q_halt"]), "steps": take(out["steps"]),
          "cost_steps": cost}


def pick_rollout(preds: jax.Array, q_halt: jax.Array, steps: jax.Array, how: str) -> jax.Array:
  """[B] the chosen rollout of each puzzle from preds [B, K, L], q_halt [B, K], steps [B, K]."""
  if how == "q":
    return jnp.argmax(q_halt, axis=1)
  if how == "first_halt":  # fewest steps; among those, the most confident
    first = steps == steps.min(axis=1, keepdims=True)
    return jnp.argmax(jnp.where(first, q_halt, -jnp.inf), axis=1)
  if how == "vote":
    agree = jnp.all(preds[:, :, None, :] == preds[:, None, :, :], axis=-1).sum(-1)  # [B, K]
    return jnp.argmax(agree, axis=1)
  raise ValueError(f"pick {how!r}; choose one of {PICKS}")


def _rollouts(params, batch, spec: ModelSpec, strategy: Strategy, step_preds: bool = False
              ) -> dict[str, jax.Array]:
  """`eval_batch` for one rollout per row (noise in the latents when strategy.noise > 0)."""
  scheme = model_lib.scheme_of(spec)
  state = act.refresh(spec, act.initial_state(spec, batch), batch, jax.random.key(0))
  labels = batch["labels"]
  rows = model_lib.puzzle_rows(params, batch["puzzle_identifiers"])
  B = labels.shape[0]
  mask = labels != losses.IGNORE_LABEL_ID
  counts = jnp.maximum(mask.sum(-1), 1)
  w = strategy.guidance_w
  cfg = strategy.guidance == "cfg"
  noise_key = jax.random.key(strategy.seed)

  def perturb(carry, step):
    """Gaussian noise on every floating-point carry entry (the latents); per step and row."""
    keys = jax.random.split(jax.random.fold_in(noise_key, step[0]), len(carry))
    return {name: (value + strategy.noise * jax.random.normal(key, value.shape, value.dtype)
                   if jnp.issubdtype(value.dtype, jnp.floating) else value)
            for key, (name, value) in zip(keys, sorted(carry.items()))}

  def one_step(carry, _):
    state, l_u, done, preds, last, stable, q_halt, steps = carry
    if cfg:  # the same step without its conditioning, from the same carry
      _, unconditioned = model_lib.step(params, rows, spec, scheme.unconditioned(state["carry"]),
                                        state["data"], training=False)
      l_u = unconditioned.logits
    state, readout = act.advance(params, rows, spec, state, training=False,
                                 adaptive_eval=strategy.halt == "q")
    committed = guided(l_u, readout.logits, w)
    if w != 1.0 and "feedback" in scheme.capabilities():
      state = dict(state, carry=scheme.feed_back(state["carry"], committed))
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
    per_step = (correct.sum(-1) / counts, correct.sum(-1) == mask.sum(-1),
                preds if step_preds else None)
    l_u = readout.logits if l_u is not None and not cfg else None
    if strategy.noise > 0:  # test-time scaling: perturb the latents the next step starts from
      state = dict(state, carry=perturb(state["carry"], state["carry"]["steps"]))
      if l_u is not None:  # the reference is the readout of the perturbed state
        l_u = scheme.answer_logits(params, rows, state["carry"])
    return (state, l_u, done, preds, new_preds, stable, q_halt, steps), per_step

  # The initial state's readout: the reference of step 1 under guidance, and the prediction a
  # first step "did not change" under convergence halting (a scheme without a reference
  # readout has none: its rows converge from step 2 on). Plain inference never reads it.
  l_0, last = None, jnp.full(labels.shape, -1, jnp.int32)
  if (w != 1.0 and not cfg) or (strategy.halt == "converged"
                                and "reference_readout" in scheme.capabilities()):
    l_0 = scheme.answer_logits(params, rows, state["carry"])
    last = jnp.argmax(l_0, axis=-1).astype(jnp.int32)
  init = (state, l_0 if w != 1.0 and not cfg else None, jnp.zeros((B,), bool),
          jnp.zeros(labels.shape, jnp.int32), last, jnp.zeros((B,), jnp.int32),
          jnp.zeros((B,), jnp.float32), jnp.zeros((B,), jnp.int32))
  (_, _, _, preds, _, _, q_halt, steps), (token_acc, exact, per_step_preds) = jax.lax.scan(
      one_step, init, None, length=strategy.steps(spec))
  out = {"token_acc": token_acc, "exact": exact, "preds": preds, "q_halt": q_halt,
         "steps": steps}
  if step_preds:
    out["step_preds"] = per_step_preds
  return out
