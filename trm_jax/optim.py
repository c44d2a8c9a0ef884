"""Optimisers of the official recipe: AdamATan2, sparse sign-SGD for the puzzle table, schedule, EMA."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


def warmup_cosine(base_lr: float, warmup_steps: int, total_steps: int,
                  min_ratio: float = 1.0) -> optax.Schedule:
  """Linear warmup from 0, then half a cosine down to `min_ratio * base_lr` (1.0 = constant).

  Indexed like the official trainer: the first optimiser update uses step 1.
  """
  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    warm = base_lr * step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    cosine = base_lr * (min_ratio + jnp.maximum(
        0.0, (1 - min_ratio) * 0.5 * (1.0 + jnp.cos(math.pi * progress))))
    return jnp.where(step < warmup_steps, warm, cosine)
  return schedule


class AdamATan2State(NamedTuple):
  count: jax.Array
  mu: optax.Updates
  nu: optax.Updates


def adam_atan2(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.95,
               weight_decay: float = 0.0) -> optax.GradientTransformation:
  """Adam with atan2 in place of m / (sqrt(v) + eps), and decoupled weight decay.

  As the official CUDA kernel (adam-atan2, a = b = 1) computes it:
    p <- p * (1 - lr * wd)
    p <- p - lr / (1 - b1^t) * atan2(m, sqrt(v / (1 - b2^t)))
  The first moment's bias correction multiplies the step rather than entering atan2.
  """
  def init(params):
    zeros = lambda p: jnp.zeros_like(p, jnp.float32)
    return AdamATan2State(jnp.zeros([], jnp.int32), jax.tree.map(zeros, params),
                          jax.tree.map(zeros, params))

  def update(grads, state, params):
    count = state.count + 1
    lr = learning_rate(count) if callable(learning_rate) else learning_rate
    mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
    nu = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * jnp.square(g), state.nu, grads)
    t = count.astype(jnp.float32)
    step_size = lr / (1 - b1**t)
    bc2_sqrt = jnp.sqrt(1 - b2**t)

    def delta(p, m, v):
      return (-lr * weight_decay * p - step_size * jnp.arctan2(m, jnp.sqrt(v) / bc2_sqrt)).astype(p.dtype)

    return jax.tree.map(delta, params, mu, nu), AdamATan2State(count, mu, nu)

  return optax.GradientTransformation(init, update)


def sparse_sign_sgd(table: jax.Array, ids: jax.Array, row_grads: jax.Array, lr: jax.Array,
                    weight_decay: float) -> jax.Array:
  """Sign-SGD with decoupled decay on the rows of `table` used by this batch only.

  Gradients of rows that share an id are summed first (as the official optimiser does after
  its all-gather), so a repeated id is updated once: p <- p * (1 - lr*wd) - lr * sign(sum g).
  Static shapes: the per-id sums come from a [B, B] same-id mask, and duplicate ids write the
  same value.
  """
  same_id = (ids[:, None] == ids[None, :]).astype(row_grads.dtype)
  summed = same_id @ row_grads
  rows = jnp.take(table, ids, axis=0)
  new_rows = rows * (1 - lr * weight_decay) - lr * jnp.sign(summed)
  return table.at[ids].set(new_rows.astype(table.dtype))


def ema_update(ema, params, rate: float):
  """ema <- rate * ema + (1 - rate) * params."""
  return jax.tree.map(lambda e, p: rate * e + (1 - rate) * p, ema, params)
