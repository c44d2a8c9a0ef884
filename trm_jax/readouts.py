"""What each recursion step does: readout trajectories, advantage margins and dead compute.

A readout point is one update of the answer state (TRM: each of the T y-updates of a
supervision step, 48 points over 16 steps; DIS: one per step; HRM: each z_H update). Its
readout is l_c = lm_head(answer state) in fp32, and its reference l_u is the readout at the
point before (point 1: the initial state, `Scheme.answer_logits`). With guidance scale w,
l_w = l_u + w (l_c - l_u) and dl = l_c - l_u (../shared/spec/POLICY_IMPROVEMENT.md):

  advantage margin  dl(y*) - E_{a ~ softmax(l_w)}[dl(a)] per supervised token; by Prop. 4.1
                    d CE(l_w, y*) / dw = -margin, so a positive margin means the step lowers the
                    cross-entropy of the correct token (at w = 1: moving from l_u to l_c helps).

Per point and row (sums over the row's supervised tokens, labels != -100): correct tokens,
exact match, softmax CE on the labels and on the scheme's step target, the margin and the
counts of tokens whose margin is positive / negative beyond MARGIN_TOL,
KL(softmax(l_c) || softmax(l_u)), and the tokens whose argmax changed. `summarize` turns the
sums into per-point means and the dead-compute account: a row's last useful point is the last
point at which any supervised token's argmax changed (0: none ever did); the forward passes
after it changed nothing.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from trm_jax import act, losses
from trm_jax import model as model_lib
from trm_jax.config import ModelSpec

POINT_SUMS = ("tokens", "correct", "exact", "ce_labels", "ce_target", "target_tokens", "margin",
              "margin_positive", "margin_negative", "kl", "changed_tokens", "changed")
# A token's margin counts as positive (negative) above (below) +-MARGIN_TOL nats: saturated
# readouts (p(y*) = 1 in fp32 before and after) have margins of rounding size, either sign.
MARGIN_TOL = 1e-4


def advantage_margin(l_u: jax.Array, l_c: jax.Array, labels: jax.Array, w: float = 1.0
                     ) -> jax.Array:
  """Per token: dl(y*) - E_{a ~ softmax(l_w)}[dl(a)], dl = l_c - l_u, l_w = l_u + w dl.
  `labels` must be valid class indices (mask ignored tokens yourself)."""
  dl = l_c - l_u
  policy = jax.nn.softmax(l_u + w * dl, axis=-1)
  return (jnp.take_along_axis(dl, labels[..., None], axis=-1)[..., 0]
          - jnp.sum(policy * dl, axis=-1))


def point_stats(l_u: jax.Array, l_c: jax.Array, labels: jax.Array, targets: jax.Array,
                w: float = 1.0) -> dict[str, jax.Array]:
  """Per-row sums [B] for one readout point (see the module docstring)."""
  mask = labels != losses.IGNORE_LABEL_ID
  safe = jnp.where(mask, labels, 0)
  log_p = jax.nn.log_softmax(l_c, axis=-1)
  pred, prev = jnp.argmax(l_c, axis=-1), jnp.argmax(l_u, axis=-1)
  correct = (pred == labels) & mask
  target_mask = targets != losses.IGNORE_LABEL_ID
  target_ce = -jnp.take_along_axis(log_p, jnp.where(target_mask, targets, 0)[..., None], -1)[..., 0]
  margin = advantage_margin(l_u, l_c, safe, w)
  kl = jnp.sum(jnp.exp(log_p) * (log_p - jax.nn.log_softmax(l_u, axis=-1)), axis=-1)
  changed = (pred != prev) & mask
  masked_sum = lambda x, m=mask: jnp.sum(jnp.where(m, x, 0.0), axis=-1)
  return {
      "tokens": mask.sum(-1).astype(jnp.float32),
      "correct": correct.sum(-1).astype(jnp.float32),
      "exact": (correct.sum(-1) == mask.sum(-1)).astype(jnp.float32),
      "ce_labels": masked_sum(-jnp.take_along_axis(log_p, safe[..., None], -1)[..., 0]),
      "ce_target": masked_sum(target_ce, target_mask),
      "target_tokens": target_mask.sum(-1).astype(jnp.float32),
      "margin": masked_sum(margin),
      "margin_positive": masked_sum((margin > MARGIN_TOL).astype(jnp.float32)),
      "margin_negative": masked_sum((margin < -MARGIN_TOL).astype(jnp.float32)),
      "kl": masked_sum(kl),
      "changed_tokens": changed.sum(-1).astype(jnp.float32),
      "changed": jnp.any(changed, axis=-1).astype(jnp.float32),
  }


def trajectory(params: model_lib.Params, batch: Mapping[str, jax.Array], *, spec: ModelSpec,
               guidance_w: float = 1.0) -> dict[str, jax.Array]:
  """Runs a batch from fresh latents for N_sup supervision steps with every readout recorded
  (plain inference: each step commits its own readout) and returns `point_stats` of every point,
  each [P, B] with P = N_sup x points per step, plus `q_halt` [N_sup, B]."""
  scheme = model_lib.scheme_of(spec)
  state = act.refresh(spec, act.initial_state(spec, batch), batch, jax.random.key(0))
  rows = model_lib.puzzle_rows(params, batch["puzzle_identifiers"])
  labels = batch["labels"]

  def one_step(carry, _):
    state, l_prev = carry
    state, readout = act.advance(params, rows, spec, state, training=False, record=True)
    points = readout.trace  # [U, B, L, V]
    refs = jnp.concatenate([l_prev[None], points[:-1]], axis=0)
    targets = scheme.targets(state["carry"], state["data"])
    stats = jax.vmap(lambda l_u, l_c: point_stats(l_u, l_c, labels, targets, guidance_w))(
        refs, points)
    return (state, points[-1]), (stats, readout.q_halt)

  l_0 = scheme.answer_logits(params, rows, state["carry"])
  _, (stats, q_halt) = jax.lax.scan(one_step, (state, l_0), None, length=spec.halt_max_steps)
  out = {k: v.reshape((-1,) + v.shape[2:]) for k, v in stats.items()}  # [N_sup*U, B]
  out["q_halt"] = q_halt
  return out


def last_useful_point(changed: np.ndarray) -> np.ndarray:
  """[P, B] 0/1 'some supervised argmax changed at point p' -> [B] the last such point
  (1-based; 0 when the prediction never changed from the initial state's)."""
  changed = np.asarray(changed) > 0
  P = changed.shape[0]
  any_change = changed.any(axis=0)
  last = P - np.argmax(changed[::-1], axis=0)
  return np.where(any_change, last, 0)


def summarize(sums: Mapping[str, np.ndarray], last_useful: np.ndarray, valid_rows: int, *,
              passes_per_point: float, points_per_step: int) -> dict[str, Any]:
  """Per-point means from summed `point_stats` ([P] each, summed over rows) and the
  dead-compute account from every row's last useful point."""
  n = max(valid_rows, 1)
  tokens = np.maximum(sums["tokens"], 1)
  P = len(tokens)
  points = []
  for p in range(P):
    points.append({
        "point": p + 1,
        "supervision_step": p // points_per_step + 1,
        "forward_passes": (p + 1) * passes_per_point,
        "token_accuracy": float(sums["correct"][p] / tokens[p]),
        "exact_accuracy": float(sums["exact"][p] / n),
        "ce_labels": float(sums["ce_labels"][p] / tokens[p]),
        "ce_target": float(sums["ce_target"][p] / max(sums["target_tokens"][p], 1)),
        "margin": float(sums["margin"][p] / tokens[p]),
        "margin_positive": float(sums["margin_positive"][p] / tokens[p]),
        "margin_negative": float(sums["margin_negative"][p] / tokens[p]),
        "kl": float(sums["kl"][p] / tokens[p]),
        "changed_tokens": float(sums["changed_tokens"][p] / tokens[p]),
        "rows_changed": float(sums["changed"][p] / n),
    })
  last_useful = np.asarray(last_useful)
  total = P * passes_per_point
  dead = total - last_useful * passes_per_point
  histogram = np.bincount(last_useful, minlength=P + 1)
  return {
      "examples": int(valid_rows),
      "points": points,
      "forward_passes_per_example": float(total),
      "dead_passes_per_example": float(dead.mean()) if len(dead) else 0.0,
      "dead_fraction": float(dead.mean() / total) if len(dead) and total else 0.0,
      "last_useful_point_median": float(np.median(last_useful)) if len(dead) else 0.0,
      "last_useful_point_histogram": histogram.tolist(),
  }


def format_table(summary: Mapping[str, Any]) -> str:
  lines = ["| point | sup. step | passes | token acc | exact acc | CE labels | CE target | "
           "margin | margin > 0 | margin < 0 | KL to prev | tokens changed | rows changed |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in summary["points"]:
    lines.append(f"| {r['point']} | {r['supervision_step']} | {r['forward_passes']:g} | "
                 f"{r['token_accuracy']:.4f} | {r['exact_accuracy']:.4f} | {r['ce_labels']:.4f} | "
                 f"{r['ce_target']:.4f} | {r['margin']:+.4f} | {r['margin_positive']:.3f} | "
                 f"{r['margin_negative']:.3f} | "
                 f"{r['kl']:.4f} | {r['changed_tokens']:.4f} | {r['rows_changed']:.3f} |")
  total = summary["forward_passes_per_example"]
  lines += ["", f"examples: {summary['examples']}",
            f"forward passes per example: {total:g}",
            f"dead passes per example (after the last change of the prediction): "
            f"{summary['dead_passes_per_example']:.1f} ({100 * summary['dead_fraction']:.1f}%)",
            f"median last useful point: {summary['last_useful_point_median']:g} of "
            f"{len(summary['points'])}",
            f"margins: per token, at guidance w = {summary.get('margin_w', 1.0):g}; 'margin > 0' "
            f"and '< 0' count tokens beyond +-{MARGIN_TOL:g} nats (saturated tokens are neither)"]
  return "\n".join(lines)
