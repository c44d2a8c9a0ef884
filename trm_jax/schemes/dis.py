"""Deep Improvement Supervision (DIS; Asadulaev et al., ICML 2026), as the official code runs it
(machinestein/Deep-Improvement-Supervision: `TinyRecursiveReasoningModel_ACTV5` with
`ACTLossHeadV4`).

Against TRM (../shared/spec/POLICY_IMPROVEMENT.md):
- every sample runs exactly N_sup supervision steps (no Q loss, no exploration); the recursion
  is TRM's (the official recipes use T=1, n=2: every update with gradient);
- an integer timestep embedding (N_sup + 2 learned rows) of the step t = 1..N_sup is added to
  every input position, the puzzle prefix included, before positions and scale;
- the token input of step 1 is the puzzle, of every later step the previous step's argmax
  ("fully autoregressive", training and inference);
- step t is supervised with frame t of a path from the input x0 to the labels x1: the cells
  where x0 != x1, in one random order per sample (drawn when the sample enters the carry, kept
  while it stays), frame k with the first floor(k * n_diff / N_sup) of them revealed. Cells
  whose label is ignored (-100) differ from the input, so they are on the path too: they keep
  the input token (and are supervised with it) until revealed, then are ignored, as in the
  official code. Targets outside [0, vocab) are ignored. Loss: stablemax CE, mean over the
  step's supervised tokens, summed over rows.

Options (`model.scheme_options`; the first value is the official code's):
  input         "prediction": the previous argmax from step 2 on; "puzzle": always the puzzle
                (the paper's pseudocode).
  targets       "path": the input-to-labels path above; "mask": the paper's masking schedule,
                the labels with a linearly decreasing share of the supervised cells masked,
                masked cells ignored by the loss (step t reveals floor(t * n / N_sup) of the n
                supervised cells, in one random order per sample; step N_sup: all of them).
  loss_weights  "uniform"; "linear": step t's loss weighted 2t / (N_sup + 1) (increasing, mean 1
                over the steps; the paper's text).
  loss          "official": CE(l_c, frame t); "dual": plus CE(l_u, frame t-1) with l_u the
                readout of the state the step starts from (the authors' README, the dual form
                of the paper's Eq. 9). The carry is detached between steps, so the added term
                reaches only the output head (and y_init at step 1).
  cfg_dropout   p in [0, 1], default 0 (the official code declares `cf_uncond_prob` and never
                uses it): in training each row's step is unconditioned with probability p, drawn
                per row and step from the step's rng. Unconditioned = the token input is all PAD
                (0) and the puzzle-embedding prefix is zero; the latents and the timestep
                embedding stay. At inference, `eval.guidance = 'cfg'` runs every step twice from
                the same carry, conditioned (l_c, whose latents carry on) and unconditioned
                (l_u), and commits l_u + w (l_c - l_u) (trm_jax/inference.py).
  halting       "none"; "learned": the Q head's halting logit is trained next to DIS with TRM's
                BCE on "the step's prediction is the exact answer" (weight 0.5, no Q-learning,
                no continue head); training still runs N_sup steps, and evaluation with
                `eval.halt = 'q'` stops a row when its logit is positive.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from trm_jax import losses, nn, recursion, schemes
from trm_jax.config import ModelSpec
from trm_jax.schemes.trm import TRM


class DISModel(nn.TinyRecursiveModel):
  """TRM's modules plus the timestep table (rows 0..N_sup+1, init std 1/sqrt(D))."""

  def __init__(self, spec: ModelSpec, *, rngs: nnx.Rngs):
    super().__init__(spec, rngs=rngs)
    D = spec.hidden_size
    self.timestep_embed = nnx.Param(nn.trunc_normal(
        rngs.params(), (spec.halt_max_steps + 2, D), D**-0.5, spec.jnp_param_dtype))


def linear_path(rng: jax.Array, x0: jax.Array, x1: jax.Array, num_frames: int) -> jax.Array:
  """[B, num_frames, L] frames from x0 (frame 0) to x1 (the last) revealing the differing cells
  of each row in a random order, floor(k * n_diff / (num_frames - 1)) of them at frame k."""
  differ = x0 != x1
  scores = jnp.where(differ, jax.random.uniform(rng, x0.shape), jnp.inf)
  rank = jnp.argsort(jnp.argsort(scores, axis=1), axis=1)  # position of each cell in the order
  revealed = (jnp.arange(num_frames)[None, :] * differ.sum(1)[:, None]) // (num_frames - 1)
  mask = rank[:, None, :] < revealed[:, :, None]
  return jnp.where(mask, x1[:, None, :], x0[:, None, :]).astype(jnp.int32)


@schemes.register
class DIS(TRM):
  """TRM's step and recursion with DIS's input, carry, targets, loss and fixed halting."""

  name = "dis"
  official = recursion.Official(
      "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV5",
      keys={"inner.timestep_embed.embedding_weight": ("timestep_embed", False)})

  @dataclasses.dataclass(frozen=True)
  class Options:
    input: Literal["prediction", "puzzle"] = "prediction"
    targets: Literal["path", "mask"] = "path"
    loss_weights: Literal["uniform", "linear"] = "uniform"
    halting: Literal["none", "learned"] = "none"
    cfg_dropout: float = 0.0
    loss: Literal["official", "dual"] = "official"

  def build(self, rngs):
    return DISModel(self.spec, rngs=rngs)

  def initial_carry(self, batch_size):
    spec = self.spec
    return {**super().initial_carry(batch_size),
            "prev_pred": jnp.zeros((batch_size, spec.seq_len), jnp.int32),
            "path": jnp.zeros((batch_size, spec.halt_max_steps + 1, spec.seq_len), jnp.int32),
            "uncond": jnp.zeros((batch_size,), bool)}

  def metrics(self):
    metrics = {**recursion.Scheme.metrics(self), "accuracy": "per_finished",
               "steps": "per_finished", "target_exact_accuracy": "per_row"}
    if self.opts.loss == "dual":
      metrics["reference_loss"] = "per_row"
    if self.opts.halting == "learned":
      metrics.update(q_halt_loss="per_row", q_halt_accuracy="per_finished")
    return metrics

  def capabilities(self):
    caps = set(super().capabilities())
    if self.opts.halting != "learned":  # else the Q head is never trained
      caps.discard("halting_head")
    if self.opts.cfg_dropout == 0:  # never trained without its conditioning
      caps.discard("unconditioned")
    return frozenset(caps)

  def missing_hint(self, capability):
    return {"halting_head": "DIS: scheme_options.halting='learned'",
            "unconditioned": "DIS: scheme_options.cfg_dropout > 0"}.get(capability, "")

  def refresh(self, carry, fresh, batch, rng):
    if rng is None:
      raise ValueError("DIS draws each new row's target path: refresh needs an rng")
    labels = batch["labels"].astype(jnp.int32)
    start = (batch["inputs"].astype(jnp.int32) if self.opts.targets == "path"
             else jnp.full_like(labels, losses.IGNORE_LABEL_ID))  # "mask": unrevealed = ignored
    path = linear_path(rng, start, labels, self.spec.halt_max_steps + 1)
    return dict(carry, path=jnp.where(fresh[:, None, None], path, carry["path"]))

  def step(self, params, rows, carry, data, t, rng, *, training, record=False):
    p = self.opts.cfg_dropout
    if training and p > 0:  # classifier-free-guidance training: drop the conditioning
      # fold 2: train_step's refresh (which draws the paths) has fold 1 of the same step rng
      carry = dict(carry, uncond=jax.random.bernoulli(jax.random.fold_in(rng, 2), p, t.shape))
    new_carry, readout = super().step(params, rows, carry, data, t, rng,
                                      training=training, record=record)
    if training and self.opts.loss == "dual":
      reference = self.answer_logits(params, rows, carry)
      readout = readout._replace(extras=dict(readout.extras, reference_logits=reference))
    return dict(new_carry, uncond=jnp.zeros_like(carry["uncond"])), readout

  def unconditioned(self, carry):
    return dict(carry, uncond=jnp.ones_like(carry["uncond"]))

  def embed(self, model, rows, carry, data, t):
    puzzle = (t == 1) | (self.opts.input == "puzzle")
    inputs = jnp.where(puzzle[:, None], data["inputs"].astype(jnp.int32), carry["prev_pred"])
    inputs = jnp.where(inputs == losses.IGNORE_LABEL_ID, 0, inputs)
    uncond = carry["uncond"]
    inputs = jnp.where(uncond[:, None], 0, inputs)
    if rows is not None:
      rows = jnp.where(uncond[:, None], jnp.zeros_like(rows), rows)
    timestep = jnp.take(model.timestep_embed[...], jnp.clip(t, 0, self.spec.halt_max_steps),
                        axis=0)
    return model.embed(inputs, rows, timestep)

  def next_carry(self, carry, latents, logits):
    return self.feed_back(super().next_carry(carry, latents, logits), logits)

  def feed_back(self, carry, logits):
    """The argmax of the committed logits is the next step's token input."""
    return dict(carry, prev_pred=jnp.argmax(logits, axis=-1).astype(jnp.int32))

  def q_continue_target(self, params, rows, new_carry, data, t, training):
    return {}  # no Q loss

  def halted(self, readout, t, rng, *, training, adaptive=False):
    halted = t >= self.spec.halt_max_steps
    if adaptive and not training and "halting_head" in self.capabilities():
      halted = halted | (readout.q_halt > 0)
    return halted

  def targets(self, carry, data):
    """Frame t of each row's path (t = the step just taken), out-of-vocabulary -> ignored."""
    return self.frame(carry, carry["steps"])

  def frame(self, carry, k):
    """Frame k [B] of each row's path, out-of-vocabulary -> ignored."""
    frame = jnp.clip(k, 0, self.spec.halt_max_steps)
    target = jnp.take_along_axis(carry["path"], frame[:, None, None], axis=1)[:, 0]
    valid = (target >= 0) & (target < self.spec.vocab_size)
    return jnp.where(valid, target, losses.IGNORE_LABEL_ID)

  def step_loss(self, logits, targets):
    """Per row: the mean token loss over the row's supervised targets."""
    mask = targets != losses.IGNORE_LABEL_ID
    token_loss = losses.TOKEN_LOSSES[self.spec.loss_type](logits, targets, mask)
    return jnp.sum(token_loss / jnp.maximum(mask.sum(-1), 1)[:, None], axis=-1)

  def loss(self, readout, targets, carry, data, halted):
    """Official ACTLossHeadV4: the step-target CE; metrics against the final labels on rows that
    finished, plus `target_exact_accuracy` (every row, against its step target)."""
    row_loss = self.step_loss(readout.logits, targets)
    reference = readout.extras.get("reference_logits")
    if reference is not None:  # the dual loss: the step's start read against frame t-1
      reference_loss = self.step_loss(reference, self.frame(carry, carry["steps"] - 1))
      row_loss = row_loss + reference_loss
    if self.opts.loss_weights == "linear":
      row_loss = row_loss * (2 * carry["steps"] / (self.spec.halt_max_steps + 1))
    lm_loss = jnp.sum(row_loss)
    mask, correct, seq_correct, counts = losses.sequence_correctness(readout.logits, data["labels"])
    valid = halted & (counts > 0)
    _, _, target_correct, _ = losses.sequence_correctness(readout.logits, targets)
    metrics = {
        "count": valid.sum(),
        "accuracy": jnp.sum(jnp.where(valid, (correct / jnp.maximum(counts, 1)[:, None]).sum(-1),
                                      0.0)),
        "exact_accuracy": (valid & seq_correct).sum(),
        "steps": jnp.where(valid, carry["steps"], 0).sum(),
        "lm_loss": jax.lax.stop_gradient(lm_loss),
        "target_exact_accuracy": target_correct.sum(),
    }
    if reference is not None:
      metrics["reference_loss"] = jax.lax.stop_gradient(jnp.sum(reference_loss))
    total = lm_loss
    if self.opts.halting == "learned":
      q_halt_loss = jnp.sum(losses.binary_cross_entropy_with_logits(readout.q_halt, seq_correct))
      total = total + 0.5 * q_halt_loss
      metrics["q_halt_loss"] = jax.lax.stop_gradient(q_halt_loss)
      metrics["q_halt_accuracy"] = (valid & ((readout.q_halt >= 0) == seq_correct)).sum()
    return total, {k: v.astype(jnp.float32) for k, v in metrics.items()}
