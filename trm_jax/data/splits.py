"""Validation splits carved from a dataset's training split (builder config
`validation_fraction`): how many groups, and which records go where.

A group is a training puzzle with all its augmentations, so a held-out puzzle never trains in
any of its forms; ARC holds out tasks' test pairs instead (`arc.build_examples`).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from trm_jax.data.pipeline import PuzzleIndex


def validation_count(fraction: float, num_groups: int) -> int:
  """Groups a `validation_fraction` holds out of `num_groups` (0 for 0; else at least 1 and at
  most all but one). Raises ValueError naming the field for a fraction outside [0, 1)."""
  if not 0 <= fraction < 1:
    raise ValueError(f"builder config validation_fraction = {fraction}: must be in [0, 1)")
  if not fraction:
    return 0
  if num_groups < 2:
    raise ValueError(f"builder config validation_fraction = {fraction}: {num_groups} training "
                     "group(s) leave none to hold out")
  return min(max(1, round(fraction * num_groups)), num_groups - 1)


def carve_validation(arrays: Mapping[str, np.ndarray], index: PuzzleIndex, num_groups: int,
                     seed: int) -> tuple[tuple[dict, PuzzleIndex], tuple[dict, PuzzleIndex]]:
  """((arrays, index) of train, of validation): `num_groups` seeded groups of the
  one-example-per-puzzle training records `arrays` (laid out by `index`) leave the training split
  whole, augmentations and all; the validation split holds the first
  puzzle of each (the original: the builders put it first, and the test split is not augmented
  either), minus any whose input also occurs among the remaining training inputs (N-Queens
  boards recur across puzzles), so that no validation input is ever trained on."""
  if not 0 < num_groups < index.num_groups:
    raise ValueError(f"{num_groups} validation groups: must be between 1 and "
                     f"{index.num_groups - 1} (the training groups)")
  if index.num_records != len(index.puzzle_starts) - 1:
    raise ValueError("carve_validation needs one example per puzzle")
  held = np.zeros(index.num_groups, bool)
  held[np.random.default_rng([seed, num_groups]).choice(index.num_groups, num_groups,
                                                        replace=False)] = True
  group_of = np.repeat(np.arange(index.num_groups), np.diff(index.group_starts))
  keep = ~held[group_of]  # records (= puzzles) that stay in train
  first = index.group_starts[:-1][held]
  seen = {row.tobytes() for row in arrays["inputs"][keep]}
  first = np.asarray([i for i in first if arrays["inputs"][i].tobytes() not in seen], np.int64)
  if not len(first):
    raise ValueError(f"{num_groups} validation groups: every held-out input also occurs in "
                     "the training inputs; hold out a larger validation_fraction")
  sizes = np.diff(index.group_starts)[~held]

  def split(rows, group_sizes):
    part = {k: v[rows] for k, v in arrays.items()}
    part["group"] = np.repeat(np.arange(len(group_sizes), dtype=np.int32), group_sizes)
    return part, PuzzleIndex.from_sizes(np.ones(len(rows), np.int64), group_sizes)

  return split(np.flatnonzero(keep), sizes), split(first, np.ones(len(first), np.int64))
