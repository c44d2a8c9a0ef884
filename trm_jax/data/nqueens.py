"""N-Queens, the DIS paper's extra task: complete a board on which some queens are given.

numpy and the standard library only. The encoding is that of the official DIS builder
(machinestein/Deep-Improvement-Supervision, dataset/build_nqueens_dataset.py): an n x n board
row-major as n*n tokens, PAD 0, empty cell 1, queen 2 (vocabulary 3; 8x8 gives length 64).
The label is a full solution (n queens, no two sharing a row, column or diagonal); the input
keeps a random subset of its queens, by default a uniform number in 0..n-1. With few queens
given other completions exist; the label is the solution the input was cut from, and the
official evaluator scores exact matches against it.

Official sets (8x8): train = 800 puzzles, each followed by 8 dihedral versions (`augment`), so
7,200 examples; test = 200 puzzles, not augmented; drawn with np.random.default_rng(42) and
default_rng(1042). `generate` draws from `rng` in the official builder's order (a fresh
`rng.permutation(n)` of columns at every row the backtracking enters, then `rng.integers(0, n)`
queens to keep, then `rng.choice(n, k, replace=False)` of the rows whose queens are kept), so
those seeds give the official boards.
"""

from __future__ import annotations

import numpy as np

# The dihedral transforms in the official numbering, shared with ARC and Maze.
from trm_jax.data.arc import NUM_DIHEDRAL, dihedral

PAD, EMPTY, QUEEN = 0, 1, 2
VOCAB_SIZE = 3
OFFICIAL_BOARD_SIZE = 8
OFFICIAL_NUM_TRAIN = 800
OFFICIAL_NUM_TEST = 200
OFFICIAL_NUM_AUG = 8
OFFICIAL_TRAIN_SEED = 42
OFFICIAL_TEST_SEED = 1042


def _random_solution(n: int, rng: np.random.Generator) -> list[int]:
  """Column of the queen in each row: randomised row-by-row backtracking."""
  columns = [0] * n

  def fill(row: int, cols: int, diagonals: int, anti_diagonals: int) -> bool:
    if row == n:
      return True
    for col in rng.permutation(n).tolist():
      diagonal, anti_diagonal = 1 << (row + col), 1 << (row - col + n - 1)
      if not (cols >> col & 1 or diagonals & diagonal or anti_diagonals & anti_diagonal):
        columns[row] = col
        if fill(row + 1, cols | 1 << col, diagonals | diagonal, anti_diagonals | anti_diagonal):
          return True
    return False

  if not fill(0, 0, 0, 0):
    raise ValueError(f"{n}-queens has no solution")
  return columns


def generate(num: int, n: int, rng: np.random.Generator,
             num_given: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """`num` puzzles: (inputs, labels), int32 tokens [num, n*n].

  `num_given` fixes the number of queens kept in the input; None draws it uniformly from
  0..n-1 per puzzle (the official default).
  """
  if n < 1 or n in (2, 3):
    raise ValueError(f"{n}-queens has no solution")
  if num_given is not None and not 0 <= num_given <= n:
    raise ValueError(f"num_given must be in 0..{n}, got {num_given}")
  inputs = np.full((num, n, n), EMPTY, np.int32)
  labels = np.full((num, n, n), EMPTY, np.int32)
  rows = np.arange(n)
  for i in range(num):
    columns = np.array(_random_solution(n, rng))
    labels[i, rows, columns] = QUEEN
    kept = int(rng.integers(0, n)) if num_given is None else num_given
    if kept >= n:
      inputs[i] = labels[i]
    elif kept > 0:
      given_rows = rng.choice(n, size=kept, replace=False)
      inputs[i, given_rows, columns[given_rows]] = QUEEN
  return inputs.reshape(num, n * n), labels.reshape(num, n * n)


def augment(inputs_NxL: np.ndarray, labels_NxL: np.ndarray, n: int,
            num_aug: int = OFFICIAL_NUM_AUG) -> tuple[np.ndarray, np.ndarray]:
  """Each puzzle followed by `num_aug` dihedral versions, as the official train set.

  Version a (1..num_aug) uses transform (a - 1) % 8, so the first repeats the original; the
  official builder does the same. Returns [N * (1 + num_aug), n*n], grouped by puzzle.
  """
  def versions(boards_NxL):
    boards = np.asarray(boards_NxL).reshape(-1, n, n)
    out = [[board] + [dihedral(board, a % NUM_DIHEDRAL) for a in range(num_aug)]
           for board in boards]
    return np.asarray(out).reshape(-1, n * n)
  return versions(inputs_NxL), versions(labels_NxL)


def is_valid_solution(board, n: int) -> bool:
  """Whether a token board ([n*n] or [n, n]) holds n non-attacking queens."""
  queens = np.asarray(board).reshape(n, n) == QUEEN
  rows, cols = np.nonzero(queens)
  return (len(rows) == n and len(set(rows.tolist())) == n and len(set(cols.tolist())) == n
          and len(set((rows + cols).tolist())) == n and len(set((rows - cols).tolist())) == n)


def valid_completions(inputs_NxL, preds_NxL, n: int) -> np.ndarray:
  """[N] whether each predicted board is a solution that keeps every queen of its input: the
  task's own success measure, where the official exact match against the one label the input
  was cut from undercounts (partial boards have several completions)."""
  inputs = np.asarray(inputs_NxL).reshape(-1, n * n)
  preds = np.asarray(preds_NxL).reshape(-1, n * n)
  keeps = np.all((inputs != QUEEN) | (preds == QUEEN), axis=-1)
  return np.array([bool(k) and is_valid_solution(p, n) for k, p in zip(keeps, preds)])
