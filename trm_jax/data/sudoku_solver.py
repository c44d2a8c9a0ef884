"""Sudoku solving and generation: an exact solver that counts solutions (one bitboard per digit,
most-constrained cell first) and a generator of puzzles with a unique solution and a minimum
difficulty (backtracks), for the smoke run and tests. numpy and the standard library only."""

from __future__ import annotations

import dataclasses
import functools
import random
from typing import Sequence

import numpy as np

from trm_jax.data.sudoku import BOX_SHAPES, SudokuSet, _check_size

# ----------------------------------------------------------------------------------------------
# Solving: one bitboard per digit (bit c set = cell c may still take the digit).


@dataclasses.dataclass(frozen=True)
class _Geometry:
  size: int
  units: tuple[int, ...]  # bitboards of the rows, columns and boxes
  peers: tuple[int, ...]  # per cell, the bitboard of its row, column and box


@functools.cache
def _geometry(size: int) -> _Geometry:
  _check_size(size)
  box_rows, box_cols = BOX_SHAPES[size]

  def bitboard(cells):
    return sum(1 << c for c in cells)

  rows = [bitboard(r * size + c for c in range(size)) for r in range(size)]
  cols = [bitboard(r * size + c for r in range(size)) for c in range(size)]
  boxes = [bitboard((top + i) * size + left + j for i in range(box_rows) for j in range(box_cols))
           for top in range(0, size, box_rows) for left in range(0, size, box_cols)]
  boxes_per_band = size // box_cols
  peers = tuple(rows[r] | cols[c] | boxes[r // box_rows * boxes_per_band + c // box_cols]
                for r in range(size) for c in range(size))
  return _Geometry(size, tuple(rows + cols + boxes), peers)


class _Board:
  """A partly filled grid as bitboards, one per digit (index d holds digit d + 1).

  `placed[d]`: the cells holding the digit. `allowed[d]`: the cells no peer of which holds it;
  it goes stale on filled cells, so its candidates are `allowed[d] & empty`.
  """

  __slots__ = ("g", "allowed", "placed", "empty")

  def __init__(self, g: _Geometry, allowed: list[int], placed: list[int], empty: int):
    self.g = g
    self.allowed = allowed
    self.placed = placed
    self.empty = empty

  @classmethod
  def from_values(cls, values: Sequence[int], g: _Geometry) -> _Board | None:
    """The board of a flat grid (0 = blank), or None when two givens clash."""
    placed = [0] * g.size
    blocked = [0] * g.size
    empty = 0
    for cell, value in enumerate(values):
      if not value:
        empty |= 1 << cell
      elif blocked[value - 1] >> cell & 1:
        return None
      else:
        placed[value - 1] |= 1 << cell
        blocked[value - 1] |= g.peers[cell]
    return cls(g, [~b for b in blocked], placed, empty)

  def copy(self) -> _Board:
    return _Board(self.g, list(self.allowed), list(self.placed), self.empty)

  def place(self, d: int, cell: int) -> None:
    self.allowed[d] &= ~self.g.peers[cell]
    self.placed[d] |= 1 << cell
    self.empty &= ~(1 << cell)

  def propagate(self) -> bool:
    """Places naked and hidden singles until none is left; False on a contradiction."""
    allowed, placed, units, peers, size = (self.allowed, self.placed, self.g.units, self.g.peers,
                                           self.g.size)
    empty = self.empty  # place() inlined: this loop is where generation spends its time
    while empty:
      ones = twos = 0  # cells with >= 1 and >= 2 candidates
      for a in allowed:
        a &= empty
        twos |= ones & a
        ones |= a
      if empty & ~ones:
        return False
      singles = ones & ~twos
      if singles:
        while singles:
          low = singles & -singles
          singles ^= low
          for d in range(size):
            if allowed[d] & low:
              break
          else:  # an earlier single of this batch took the cell's only digit
            return False
          allowed[d] &= ~peers[low.bit_length() - 1]
          placed[d] |= low
          empty ^= low
        continue
      progress = False
      for d in range(size):
        cands = allowed[d] & empty
        if not cands:
          if placed[d].bit_count() != size:
            return False
          continue
        for unit in units:
          spots = cands & unit
          if not spots & (spots - 1):  # at most one spot
            if spots:
              allowed[d] &= ~peers[spots.bit_length() - 1]
              placed[d] |= spots
              empty ^= spots
              cands = allowed[d] & empty
              progress = True
            elif not placed[d] & unit:
              return False
      if not progress:
        break
    self.empty = empty
    return True

  def branch_cell(self) -> int:
    """A blank cell with the fewest candidates among 2, 3 or more (the first in reading order)."""
    ones = twos = threes = fours = 0
    for a in self.allowed:
      a &= self.empty
      fours |= threes & a
      threes |= twos & a
      twos |= ones & a
      ones |= a
    pick = (twos & ~threes) or (threes & ~fours) or self.empty
    return (pick & -pick).bit_length() - 1

  def candidates(self, cell: int) -> list[int]:
    return [d for d, a in enumerate(self.allowed) if a >> cell & 1]

  def values(self) -> list[int]:
    values = [0] * self.g.size**2
    for d, cells in enumerate(self.placed):
      while cells:
        low = cells & -cells
        cells ^= low
        values[low.bit_length() - 1] = d + 1
    return values


class _Search:
  """Depth-first search with singles propagated at every node.

  `dead_ends` counts the nodes whose propagation hits a contradiction: the number of times the
  search has to back up, the difficulty measure (0 = solved by naked and hidden singles alone).
  """

  def __init__(self, max_solutions: int, shuffle: random.Random | None = None):
    self.max_solutions = max_solutions
    self.shuffle = shuffle  # candidate order: ascending digits when None
    self.solutions: list[list[int]] = []
    self.dead_ends = 0

  def run(self, board: _Board) -> bool:
    """Searches below `board` (edited); True once `max_solutions` solutions are found."""
    if not board.propagate():
      self.dead_ends += 1
      return False
    if not board.empty:
      self.solutions.append(board.values())
      return len(self.solutions) >= self.max_solutions
    cell = board.branch_cell()
    digits = board.candidates(cell)
    if self.shuffle is not None:
      self.shuffle.shuffle(digits)
    for d in digits:
      child = board.copy()
      child.place(d, cell)
      if self.run(child):
        return True
    return False


def solve(question, size: int, max_solutions: int = 2) -> tuple[list[np.ndarray], int]:
  """Up to `max_solutions` solutions (uint8 [size*size], search order) and the backtrack count.

  Deterministic. With the default 2 the search proves uniqueness, and the backtrack count is
  the work that took (what `generate` reports as the rating).
  """
  geometry = _geometry(size)
  values = np.asarray(question).reshape(-1)
  if values.size != size * size or not ((values >= 0) & (values <= size)).all():
    raise ValueError(f"a {size}x{size} question needs {size * size} values in 0..{size}")
  board = _Board.from_values(values.tolist(), geometry)
  search = _Search(max_solutions)
  if board is not None:
    search.run(board)
  return [np.array(s, np.uint8) for s in search.solutions], search.dead_ends


# ----------------------------------------------------------------------------------------------
# Generation.


def _random_full_grid(geometry: _Geometry, py_rng: random.Random) -> list[int]:
  search = _Search(max_solutions=1, shuffle=py_rng)
  search.run(_Board.from_values([0] * geometry.size**2, geometry))
  return search.solutions[0]


def _stays_unique(puzzle: list[int], cell: int, geometry: _Geometry) -> bool:
  """Whether blanking `cell` of a puzzle with a unique solution keeps the solution unique."""
  values = list(puzzle)
  values[cell] = 0
  board = _Board.from_values(values, geometry)
  # Unique iff no solution puts another digit in `cell`.
  board.allowed[puzzle[cell] - 1] &= ~(1 << cell)
  search = _Search(max_solutions=1)
  search.run(board)
  return not search.solutions


def _minimal_puzzle(solution: list[int], geometry: _Geometry, py_rng: random.Random) -> list[int]:
  """Blanks cells in random order while the solution stays unique."""
  puzzle = list(solution)
  order = list(range(len(puzzle)))
  py_rng.shuffle(order)
  for cell in order:
    if _stays_unique(puzzle, cell, geometry):
      puzzle[cell] = 0
  return puzzle


def generate(num: int, size: int, rng: np.random.Generator, min_backtracks: int = 0,
             max_attempts: int | None = None) -> SudokuSet:
  """`num` random puzzles with a unique solution and rating (backtracks) >= `min_backtracks`.

  Each puzzle blanks cells of a random full grid in random order for as long as the solution
  stays unique (so it is minimal: no given can be removed). Most such puzzles need few
  backtracks; a high `min_backtracks` discards many, and after `max_attempts` grids (default
  1000 * num) RuntimeError says the filter is too strict.
  """
  geometry = _geometry(size)
  py_rng = random.Random(int(rng.integers(2**63)))
  max_attempts = 1000 * max(num, 1) if max_attempts is None else max_attempts
  questions, answers, ratings = [], [], []
  attempts = 0
  while len(questions) < num:
    if attempts == max_attempts:
      raise RuntimeError(f"only {len(questions)} of {num} {size}x{size} puzzles reached "
                         f"{min_backtracks} backtracks in {max_attempts} attempts")
    attempts += 1
    solution = _random_full_grid(geometry, py_rng)
    puzzle = _minimal_puzzle(solution, geometry, py_rng)
    _, backtracks = solve(puzzle, size)
    if backtracks >= min_backtracks:
      questions.append(puzzle)
      answers.append(solution)
      ratings.append(backtracks)
  shape = (num, size * size)
  return SudokuSet(np.array(questions, np.uint8).reshape(shape),
                   np.array(answers, np.uint8).reshape(shape), np.array(ratings, np.float32),
                   size)
