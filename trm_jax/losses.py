"""Loss heads and the official metrics.

Token losses return per-token values (0 where ignored). Stablemax is computed in float64 when
`jax_enable_x64` is on (as the official code does) and in float32 otherwise; float32 is the
default because x64 doubles the cost of everything else on accelerators.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

IGNORE_LABEL_ID = -100


def _loss_dtype():
  return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def stablemax(x: jax.Array) -> jax.Array:
  """s(x) = x + 1 for x >= 0, 1 / (1 - x) for x < 0 (positive, linear growth)."""
  # jnp.minimum keeps the unused branch finite so its gradient cannot turn into NaN.
  return jnp.where(x < 0, 1.0 / (1.0 - jnp.minimum(x, 0.0)), x + 1.0)


def log_stablemax(logits: jax.Array, axis: int = -1) -> jax.Array:
  s = stablemax(logits.astype(_loss_dtype()))
  return jnp.log(s) - jnp.log(jnp.sum(s, axis=axis, keepdims=True))


def _gather_label(logprobs: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
  safe = jnp.where(mask, labels, 0).astype(jnp.int32)
  picked = jnp.take_along_axis(logprobs, safe[..., None], axis=-1)[..., 0]
  return -jnp.where(mask, picked, 0.0)


def stablemax_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
  return _gather_label(log_stablemax(logits), labels, mask)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> jax.Array:
  return _gather_label(jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), labels, mask)


TOKEN_LOSSES: dict[str, Callable[[jax.Array, jax.Array, jax.Array], jax.Array]] = {
    "stablemax": stablemax_cross_entropy,
    "softmax": softmax_cross_entropy,
}


def binary_cross_entropy_with_logits(logits: jax.Array, targets: jax.Array) -> jax.Array:
  return optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32),
                                            targets.astype(jnp.float32))


def sequence_correctness(logits: jax.Array, labels: jax.Array):
  """(mask, per-token correct, per-sequence exactly correct, supervised-token counts)."""
  mask = labels != IGNORE_LABEL_ID
  counts = mask.sum(-1)
  correct = mask & (jnp.argmax(logits, axis=-1) == labels)
  return mask, correct, correct.sum(-1) == counts, counts


def act_loss(logits: jax.Array, q_halt: jax.Array, q_continue: jax.Array, labels: jax.Array,
             halted: jax.Array, steps: jax.Array, loss_type: str = "stablemax",
             target_q_continue: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Total loss of one supervision step and the official metrics (sums over the batch).

  total = sum_b mean_t CE + 0.5 * (BCE(q_halt, seq correct) + BCE(q_continue, target)).
  The loss covers every row; metrics cover rows that halted at this step (and have labels).
  """
  mask, correct, seq_correct, counts = sequence_correctness(logits, labels)
  divisor = jnp.maximum(counts, 1)[:, None]
  valid = halted & (counts > 0)
  token_loss = TOKEN_LOSSES[loss_type](logits, labels, mask)
  lm_loss = jnp.sum(token_loss / divisor)
  q_halt_loss = jnp.sum(binary_cross_entropy_with_logits(q_halt, seq_correct))
  total = lm_loss + 0.5 * q_halt_loss
  metrics = {
      "count": valid.sum(),
      "accuracy": jnp.sum(jnp.where(valid, (correct / divisor).sum(-1), 0.0)),
      "exact_accuracy": (valid & seq_correct).sum(),
      "q_halt_accuracy": (valid & ((q_halt >= 0) == seq_correct)).sum(),
      "steps": jnp.where(valid, steps, 0).sum(),
      "lm_loss": jax.lax.stop_gradient(lm_loss),
      "q_halt_loss": jax.lax.stop_gradient(q_halt_loss),
  }
  if target_q_continue is not None:
    q_continue_loss = jnp.sum(binary_cross_entropy_with_logits(q_continue, target_q_continue))
    total = total + 0.5 * q_continue_loss
    metrics["q_continue_loss"] = jax.lax.stop_gradient(q_continue_loss)
  metrics = {k: v.astype(jnp.float32) for k, v in metrics.items()}
  return total, metrics
