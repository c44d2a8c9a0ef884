"""Paired significance over the same problems: McNemar's exact test of two 0/1 readouts and
Holm's adjustment of a family of p-values (lm_eval's per-step tests, the DIS/TRM protocol)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def holm(p_values) -> list[float]:
  """Holm's step-down adjustment of a family of p-values, in their order: the i-th smallest
  (i = 1..m) becomes min(1, max over j <= i of (m - j + 1) p_(j)). Rejecting where the adjusted
  p is below alpha keeps the chance of any false rejection in the family below alpha."""
  p_values = [float(p) for p in p_values]
  m = len(p_values)
  adjusted, running = [0.0] * m, 0.0
  for rank, i in enumerate(sorted(range(m), key=lambda i: p_values[i])):
    running = max(running, min(1.0, (m - rank) * p_values[i]))
    adjusted[i] = running
  return adjusted


def paired_exact_test(before: np.ndarray, after: np.ndarray) -> dict[str, Any]:
  """McNemar's exact test of two readouts on the same problems (0/1 outcomes per problem):
  `fixed` wrong before and right after, `broken` the reverse, `difference` the change of the
  mean, `p_value` the two-sided exact binomial test of fixed against fixed + broken at 1/2 (the
  chance that a readout no better than the other moves at least this many problems this way or
  the other). Only the discordant problems carry information; with none, p = 1."""
  before, after = np.asarray(before, bool), np.asarray(after, bool)
  if before.shape != after.shape or before.ndim != 1:
    raise ValueError(f"paired outcomes need two equal 1-D shapes, got {before.shape} and "
                     f"{after.shape}")
  fixed, broken = int(np.sum(~before & after)), int(np.sum(before & ~after))
  n = fixed + broken
  tail = sum(math.comb(n, i) for i in range(min(fixed, broken) + 1)) / 2**n
  return {"problems": int(before.size), "fixed": fixed, "broken": broken,
          "difference": float(after.mean() - before.mean()) if before.size else 0.0,
          "p_value": min(1.0, 2.0 * tail)}
