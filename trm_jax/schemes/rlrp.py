"""RLRP-style recursive latent refinement of a causal LM (../shared/spec/RLRP.md: the abstract of
"Emergent Reasoning via Recursive Latent Reinforcement Pretraining" fixes the shape; the
equations are trm_jax's choices).

A causal transformer (the project's post-norm blocks, RoPE, SwiGLU, causal attention) gives the
final hidden states h [B, L, D]. A shared latent head refines a latent per token K times,
u_0 = h,
    u_k = u_{k-1} + alpha * tanh(g([u_{k-1}, h])),    logits_k = lm_head(h + proj(u_k)),
as a `jax.lax.scan` over k (g: a linear map of [u, h] to D, then the shared head, proj: linear).
With `step_embed`, a learned row e_k per step (zero at init) is added to g's input,
g(W[u, h] + e_k): the step index, which DIS gives its network, for the head. No token is added to
the sequence. The head (`head` option) is either
  attention  one causal post-norm block (attention + SwiGLU, the backbone's kind): each
             refinement also reads the refined latents of earlier tokens, so K steps add K
             blocks of depth that the K = 1 baseline, with the same parameters, does not have;
  mlp        a SwiGLU applied to each token alone: a refinement can only re-read its own token's
             h, never what the backbone failed to gather from other tokens.
The default is attention: with the per-token head, step K did not beat step 1 on held-out
arithmetic (BUILD_NOTES, "RLRP"); an answer digit depends on carries from other tokens.

One supervision step per batch (halt_max_steps 1): the Readout holds logits_K, with `record`
every logits_k as its trace (the analysis's readout points, the reference of point 1 being
logits_0 = lm_head(h + proj(h)), `answer_logits`).

Loss of a batch (sums over rows; per-row CEs are means over the row's next-token labels):
  deep supervision  sum_k w_k CE_k, w on the simplex: `weights` uniform | linear (w_k ∝ k) |
                    last (w_K = 1);
  soft RL           reasoning rows: -mean_k mean_tokens p_k(y*) (softmax probability of the
                    true next token; `rl_span` answer: only the answer digits, all: every
                    label), weight `rl_weight`;
  improvement       reasoning rows: relu(CE_K - sg(CE_1) + margin), weight `penalty_weight`
                    (sg: stop-gradient: it moves step K down, not step 1 up); the CEs of the
                    penalty are over `penalty_span` answer: the answer digits (the default),
                    all: every label. Over every label the prompt's digits, random and so
                    unpredictable at every step, dominate a row's CE and hide the answer's
                    step gap (BUILD_NOTES, "RLRP").
Routing is in the data: a batch's rows are all arithmetic (`reasoning` = 1) or all text
(pipeline.RoutedIndex); text rows get the deep supervision only.

Options (`model.scheme_options`): K (refinement steps, 1 = the baseline with the same
parameters), head (attention | mlp), step_embed (False | True), alpha (step size in [0, 1]),
gradient (full: through all K updates; truncated: each update starts from a detached u_{k-1},
so step k's loss reaches the head and the backbone through step k only), weights, rl_weight,
rl_span, penalty_weight, penalty_span, margin (in [0, 1]).

Forward passes per supervision step: 1 + K, the backbone once plus K calls of the head (g and
the read-out); a head call costs far less than a backbone call (2 linear layers against
num_layers attention + SwiGLU blocks), so this counts calls, not FLOPs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from trm_jax import losses, nn, recursion, schemes
from trm_jax.config import ModelSpec
from trm_jax.recursion import Readout


class RLRPModel(nnx.Module):
  """Token embedding, causal blocks, the LM head and the latent refinement head (g, proj)."""

  def __init__(self, spec: ModelSpec, *, head: str, steps: int, step_embed: bool,
               rngs: nnx.Rngs):
    pdt, D = spec.jnp_param_dtype, spec.hidden_size
    self.spec = spec
    self.embed_tokens = nnx.Param(nn.trunc_normal(rngs.params(), (spec.vocab_size, D), D**-0.5,
                                                  pdt))
    self.layers = nnx.List([nn.Block(spec, rngs=rngs, causal=True)
                            for _ in range(spec.num_layers)])
    self.lm_head = nn.Linear(D, spec.vocab_size, rngs=rngs, param_dtype=pdt)
    self.g_in = nn.Linear(2 * D, D, rngs=rngs, param_dtype=pdt)
    if head == "attention":
      self.g = nn.Block(spec, rngs=rngs, causal=True)
    else:
      self.g = nn.SwiGLU(D, spec.expansion, rngs=rngs, param_dtype=pdt)
    self.proj = nn.Linear(D, D, rngs=rngs, param_dtype=pdt)
    # e_k, one row per refinement step, zero at init (the unconditioned head), added to the
    # head's input: the step index DIS gives its network, here for the refinement head.
    self.step_embed = nnx.Param(jnp.zeros((steps, D), pdt)) if step_embed else None

  def rope(self):
    return nn.rope_tables(self.spec) if self.spec.pos_encodings == "rope" else None

  def hidden(self, inputs_BL: jax.Array) -> jax.Array:
    """h [B, L, D]: the causal backbone's final hidden states."""
    spec = self.spec
    cdt = spec.jnp_compute_dtype
    h = math.sqrt(spec.hidden_size) * jnp.take(self.embed_tokens[...].astype(cdt),
                                               inputs_BL.astype(jnp.int32), axis=0)
    rope = self.rope()
    for layer in self.layers:
      h = layer(h, rope)
    return h

  def head(self, x_BLD: jax.Array) -> jax.Array:
    return self.g(x_BLD, self.rope()) if isinstance(self.g, nn.Block) else self.g(x_BLD)

  def update(self, u_BLD: jax.Array, h_BLD: jax.Array, alpha: float, k: jax.Array | int = 0
             ) -> jax.Array:
    """u_k from u_{k-1}; k (0-based) selects the step embedding when there is one."""
    x = self.g_in(jnp.concatenate([u_BLD, h_BLD], -1))
    if self.step_embed is not None:
      x = x + self.step_embed[...][k].astype(x.dtype)[None, None]
    return u_BLD + alpha * jnp.tanh(self.head(x))

  def readout(self, u_BLD: jax.Array, h_BLD: jax.Array) -> jax.Array:
    return self.lm_head(h_BLD + self.proj(u_BLD)).astype(jnp.float32)


def refine(model: RLRPModel, h_BLD: jax.Array, steps: int, alpha: float, truncated: bool
           ) -> jax.Array:
  """logits_k for k = 1..K, [K, B, L, V] (a scan over k; u_0 = h)."""
  def body(u, k):
    if truncated:
      u = jax.lax.stop_gradient(u)
    u = model.update(u, h_BLD, alpha, k)
    return u, model.readout(u, h_BLD)

  _, logits = jax.lax.scan(body, h_BLD, jnp.arange(steps))
  return logits


def convex_weights(steps: int, kind: str) -> jax.Array:
  """[K] non-negative weights summing to 1."""
  k = jnp.arange(1, steps + 1, dtype=jnp.float32)
  if kind == "uniform":
    return jnp.full((steps,), 1.0 / steps)
  if kind == "linear":
    return k / k.sum()
  if kind == "last":
    return (k == steps).astype(jnp.float32)
  raise ValueError(f"deep-supervision weights {kind!r}; choose uniform, linear or last")


def token_cross_entropy(logits_KBLV: jax.Array, labels_BL: jax.Array, loss_type: str = "softmax"
                        ) -> jax.Array:
  """[K, B, L]: every step's next-token CE (0 where the label is ignored)."""
  mask = labels_BL != losses.IGNORE_LABEL_ID
  return jax.vmap(lambda l: losses.TOKEN_LOSSES[loss_type](l, labels_BL, mask))(logits_KBLV)


def row_mean(token_KBL: jax.Array, mask_BL: jax.Array) -> jax.Array:
  """[K, B]: the mean of each row's token values over its mask (0 for an empty mask)."""
  return (jnp.sum(jnp.where(mask_BL[None], token_KBL, 0.0), -1)
          / jnp.maximum(mask_BL.sum(-1), 1)[None])


def step_cross_entropy(logits_KBLV: jax.Array, labels_BL: jax.Array, loss_type: str = "softmax"
                       ) -> jax.Array:
  """[K, B]: each row's mean next-token CE over its labels at every step (0 without labels)."""
  return row_mean(token_cross_entropy(logits_KBLV, labels_BL, loss_type),
                  labels_BL != losses.IGNORE_LABEL_ID)


def soft_rl(logits_KBLV: jax.Array, labels_BL: jax.Array, mask_BL: jax.Array) -> jax.Array:
  """[B]: -mean_k mean_{tokens in mask} p_k(y*) (0 for a row without masked tokens)."""
  safe = jnp.where(mask_BL, labels_BL, 0)
  probs = jax.nn.softmax(logits_KBLV.astype(jnp.float32), axis=-1)
  p_true = jnp.take_along_axis(probs, jnp.broadcast_to(safe, probs.shape[:-1])[..., None],
                               axis=-1)[..., 0]  # [K, B, L]
  return -row_mean(p_true, mask_BL).mean(0)


def improvement_penalty(ce_KB: jax.Array, margin: float) -> jax.Array:
  """[B]: relu(CE_K - CE_1 + margin), with CE_1 held fixed (stop-gradient): the penalty pushes
  step K below step 1, never step 1 up. Through CE_1 it can reach the same value by making
  step 1 worse, which is what it did (BUILD_NOTES, "RLRP")."""
  return jax.nn.relu(ce_KB[-1] - jax.lax.stop_gradient(ce_KB[0]) + margin)


@schemes.register
class RLRP(recursion.Scheme):
  name = "rlrp"
  # Per-row fields of the language-model data (data/lm.py): the answer digits' mask and
  # whether the row is an arithmetic (reasoning) row.
  batch_keys = ("answer_mask", "reasoning")

  @dataclasses.dataclass(frozen=True)
  class Options:
    K: int = 4
    head: Literal["attention", "mlp"] = "attention"
    step_embed: bool = False
    alpha: float = 0.5
    gradient: Literal["full", "truncated"] = "full"
    weights: Literal["uniform", "linear", "last"] = "uniform"
    rl_weight: float = 1.0
    rl_span: Literal["answer", "all"] = "answer"
    penalty_weight: float = 0.0
    penalty_span: Literal["answer", "all"] = "answer"
    margin: float = 0.0

  def check(self):
    spec = self.spec
    if spec.halt_max_steps != 1:
      self.fail("halt_max_steps", "must be 1: one supervision step per batch, the K refinements "
                "are inside it (scheme_options.K)")
    if spec.mlp_t:
      self.fail("mlp_t", "must be False: a causal LM mixes tokens by causal attention")
    if spec.puzzle_emb_ndim:
      self.fail("puzzle_emb_ndim", "must be 0: a language model has no puzzle table")
    if spec.pos_encodings not in ("rope", "none"):
      self.fail("pos_encodings", "must be 'rope' or 'none'")

  def build(self, rngs):
    return RLRPModel(self.spec, head=self.opts.head, steps=self.opts.K,
                     step_embed=self.opts.step_embed, rngs=rngs)

  def initial_carry(self, batch_size):
    """The row's tokens: all a row's state is (`answer_logits` reads from them)."""
    return {"inputs": jnp.zeros((batch_size, self.spec.seq_len), jnp.int32)}

  def batch_key_shape(self, key):
    return ((self.spec.seq_len,), jnp.bool_) if key == "answer_mask" else ((), jnp.int32)

  def capabilities(self):
    return super().capabilities() | {"update_trace"}

  def metrics(self):
    metrics = {**super().metrics(), "accuracy": "per_finished", "steps": "per_finished",
               "rl_loss": "per_row", "improvement_loss": "per_row"}
    for k in range(1, self.opts.K + 1):
      metrics[f"step{k}_ce_loss"] = "per_row"
      metrics[f"exact_accuracy_step{k}"] = "per_finished"
    return metrics

  def refresh(self, carry, fresh, batch, rng):
    del rng
    inputs = batch["inputs"].astype(jnp.int32)
    return dict(carry, inputs=jnp.where(fresh[:, None], inputs, carry["inputs"]))

  def step(self, params, rows, carry, data, t, rng, *, training, record=False):
    del rows, t, rng, training
    model = self.module(params)
    inputs = data["inputs"].astype(jnp.int32)
    logits = refine(model, model.hidden(inputs), self.opts.K, self.opts.alpha,
                    self.opts.gradient == "truncated")
    zeros = jnp.zeros(inputs.shape[:1], jnp.float32)
    return (dict(carry, inputs=inputs),
            Readout(logits[-1], zeros, zeros, logits if record else None,
                    {"step_logits": logits}))

  def answer_logits(self, params, rows, carry):
    """logits_0 = lm_head(h + proj(u_0)) with u_0 = h: the readout before any refinement."""
    del rows
    model = self.module(params)
    h = model.hidden(carry["inputs"])
    return model.readout(h, h)

  def forward_passes(self):
    return 1 + self.opts.K

  def loss(self, readout, targets, carry, data, halted):
    opts = self.opts
    logits = readout.extras["step_logits"]  # [K, B, L, V]
    K, B = logits.shape[:2]
    mask = targets != losses.IGNORE_LABEL_ID
    reasoning = data["reasoning"].astype(bool) if "reasoning" in data else jnp.zeros((B,), bool)
    answer = data["answer_mask"].astype(bool) & mask if "answer_mask" in data else mask & False
    token_ce = token_cross_entropy(logits, targets, self.spec.loss_type)  # [K, B, L]
    ce = row_mean(token_ce, mask)  # [K, B]
    lm_loss = jnp.sum(convex_weights(K, opts.weights)[:, None] * ce)
    rl_mask = answer if opts.rl_span == "answer" else mask
    rl_loss = jnp.sum(jnp.where(reasoning, soft_rl(logits, targets, rl_mask), 0.0))
    span_ce = ce if opts.penalty_span == "all" else row_mean(token_ce, answer)
    improvement_loss = jnp.sum(jnp.where(
        reasoning, improvement_penalty(span_ce, opts.margin), 0.0))
    total = lm_loss + opts.rl_weight * rl_loss + opts.penalty_weight * improvement_loss
    # Answer metrics on reasoning rows (teacher-forced: every answer digit is the argmax given
    # the true prefix, which for greedy decoding is the same as generating the whole answer).
    counts = answer.sum(-1)
    valid = halted & reasoning & (counts > 0)
    correct = (jnp.argmax(logits, -1) == targets[None]) & answer[None]  # [K, B, L]
    exact = valid[None] & (correct.sum(-1) == counts[None])  # [K, B]
    stop = jax.lax.stop_gradient
    metrics = {
        "count": valid.sum(),
        "accuracy": jnp.sum(jnp.where(valid, correct[-1].sum(-1) / jnp.maximum(counts, 1), 0.0)),
        "exact_accuracy": exact[-1].sum(),
        "steps": jnp.where(valid, carry["steps"], 0).sum(),
        "lm_loss": stop(lm_loss),
        "rl_loss": stop(rl_loss),
        "improvement_loss": stop(improvement_loss),
    }
    for k in range(K):
      metrics[f"step{k + 1}_ce_loss"] = stop(ce[k].sum())
      metrics[f"exact_accuracy_step{k + 1}"] = exact[k].sum()
    return total, {k: v.astype(jnp.float32) for k, v in metrics.items()}

