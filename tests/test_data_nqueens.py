"""N-Queens data: the official DIS encoding and draws, validity, augmentation.

The golden boards below were produced by running the official DIS builder's functions
(machinestein/Deep-Improvement-Supervision, dataset/build_nqueens_dataset.py) with
np.random.default_rng(42) and default_rng(1042), its train and test seeds.
"""

import numpy as np
import pytest

from trm_jax.data import nqueens

# Official train set (seed 42): the queen's column in each row of the first three labels, the
# rows whose queens the inputs keep, and the number of queens given over all 800 inputs.
OFFICIAL_TRAIN_COLUMNS = [[3, 0, 4, 7, 1, 6, 2, 5], [5, 2, 0, 6, 4, 7, 1, 3],
                          [6, 2, 0, 5, 7, 4, 1, 3]]
OFFICIAL_TRAIN_GIVEN_ROWS = [[0, 1, 2, 3, 5, 6, 7], [0, 1, 2, 3, 4, 5, 7], []]
OFFICIAL_TRAIN_GIVEN_TOTAL = 2936
# Official test set (seed 1042, 200 puzzles).
OFFICIAL_TEST_COLUMNS = [[5, 2, 4, 6, 0, 3, 1, 7], [5, 7, 1, 3, 0, 6, 4, 2]]
OFFICIAL_TEST_GIVEN_ROWS = [[], [3, 4]]
OFFICIAL_TEST_GIVEN_TOTAL = 776


def _independent_valid(board, n):
  queens = [(r, c) for r in range(n) for c in range(n) if board[r * n + c] == 2]
  return (len(queens) == n and len({r for r, _ in queens}) == n
          and len({c for _, c in queens}) == n and len({r + c for r, c in queens}) == n
          and len({r - c for r, c in queens}) == n)


def _board(columns):
  n = len(columns)
  board = np.ones(n * n, np.int32)
  for r, c in enumerate(columns):
    if c is not None:
      board[r * n + c] = 2
  return board


def _queen_columns(board, n):
  return [int(np.argmax(row == 2)) for row in board.reshape(n, n)]


def _given_rows(board, n):
  return [r for r, row in enumerate(board.reshape(n, n)) if (row == 2).any()]


@pytest.mark.parametrize("seed,num,columns,given_rows,total", [
    (42, 800, OFFICIAL_TRAIN_COLUMNS, OFFICIAL_TRAIN_GIVEN_ROWS, OFFICIAL_TRAIN_GIVEN_TOTAL),
    (1042, 200, OFFICIAL_TEST_COLUMNS, OFFICIAL_TEST_GIVEN_ROWS, OFFICIAL_TEST_GIVEN_TOTAL),
])
def test_matches_the_official_builder(seed, num, columns, given_rows, total):
  inputs, labels = nqueens.generate(num, 8, np.random.default_rng(seed))
  assert inputs.shape == labels.shape == (num, 64)
  assert inputs.dtype == labels.dtype == np.int32
  assert [_queen_columns(b, 8) for b in labels[:len(columns)]] == columns
  assert [_given_rows(b, 8) for b in inputs[:len(given_rows)]] == given_rows
  assert (inputs == 2).sum() == total


def test_labels_are_solutions_consistent_with_the_inputs():
  inputs, labels = nqueens.generate(300, 8, np.random.default_rng(0))
  assert set(np.unique(inputs)) <= {1, 2} and set(np.unique(labels)) == {1, 2}
  given = (inputs == 2).sum(axis=1)
  assert given.min() == 0 and given.max() == 7  # uniform in 0..n-1
  for inp, label in zip(inputs, labels):
    assert _independent_valid(label, 8)
    assert (label[inp == 2] == 2).all()


@pytest.mark.parametrize("n,num_given", [(4, 2), (6, 6), (10, 0), (1, 1)])
def test_other_sizes_and_fixed_number_given(n, num_given):
  inputs, labels = nqueens.generate(20, n, np.random.default_rng(1), num_given=num_given)
  assert inputs.shape == (20, n * n)
  assert ((inputs == 2).sum(axis=1) == num_given).all()
  assert all(_independent_valid(label, n) for label in labels)


def test_no_solution_sizes():
  for n in (2, 3):
    with pytest.raises(ValueError, match="no solution"):
      nqueens.generate(1, n, np.random.default_rng(0))
  with pytest.raises(ValueError, match="num_given"):
    nqueens.generate(1, 8, np.random.default_rng(0), num_given=9)


def test_is_valid_solution_hand_made():
  solution = _board([0, 4, 7, 5, 2, 6, 1, 3])
  assert nqueens.is_valid_solution(solution, 8)
  assert nqueens.is_valid_solution(solution.reshape(8, 8), 8)
  assert not nqueens.is_valid_solution(_board([0, 4, 7, 5, 2, 6, 1, None]), 8)  # 7 queens
  assert not nqueens.is_valid_solution(_board([0, 4, 7, 5, 2, 6, 3, 1]), 8)  # diagonal
  assert not nqueens.is_valid_solution(_board([0, 4, 7, 5, 2, 6, 1, 1]), 8)  # column
  two_in_a_row = solution.copy()
  two_in_a_row[1] = 2
  assert not nqueens.is_valid_solution(two_in_a_row, 8)
  assert nqueens.is_valid_solution(_board([1, 3, 0, 2]), 4)


def test_augment_follows_the_official_order():
  inputs, labels = nqueens.generate(3, 8, np.random.default_rng(5))
  aug_inputs, aug_labels = nqueens.augment(inputs, labels, 8)
  assert aug_inputs.shape == aug_labels.shape == (27, 64)
  board = labels[1].reshape(8, 8)
  group = aug_labels[9:18].reshape(9, 8, 8)
  # Version 0 is the original, versions 1..8 are transforms 0..7 (so 1 repeats the original).
  expected = [board, board, np.rot90(board, 1), np.rot90(board, 2), np.rot90(board, 3),
              np.fliplr(board), np.flipud(board), board.T, np.fliplr(np.rot90(board, 1))]
  np.testing.assert_array_equal(group, expected)
  for inp, label in zip(aug_inputs, aug_labels):
    assert _independent_valid(label, 8)
    assert (label[inp == 2] == 2).all()


def test_generate_is_seeded():
  first = nqueens.generate(20, 8, np.random.default_rng(9))
  again = nqueens.generate(20, 8, np.random.default_rng(9))
  other = nqueens.generate(20, 8, np.random.default_rng(10))
  np.testing.assert_array_equal(first[0], again[0])
  np.testing.assert_array_equal(first[1], again[1])
  assert not np.array_equal(first[1], other[1])


def test_valid_completions_keep_the_given_queens():
  a = _board([0, 4, 7, 5, 2, 6, 1, 3])
  b = _board([0, 5, 7, 2, 6, 3, 1, 4])  # another solution sharing the first queen
  assert nqueens.is_valid_solution(b, 8)
  given = _board([0, None, None, None, None, None, None, None])  # only row 0's queen
  other = _board([None, 4, None, None, None, None, None, None])  # a queen b lacks
  inputs = np.stack([given, given, other, given])
  preds = np.stack([a, b, b, _board([0, 4, 7, 5, 2, 6, 3, 1])])
  np.testing.assert_array_equal(nqueens.valid_completions(inputs, preds, 8),
                                [True, True, False, False])
