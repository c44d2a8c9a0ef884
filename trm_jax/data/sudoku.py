"""Sudoku data: the official CSV, validity-preserving augmentation, a solver and a generator.

numpy and the standard library only, so the TFDS builder and the input pipeline share one
implementation without pulling in TensorFlow or jax. The CSV reader here also serves Maze-Hard,
which uses the same `source,question,answer,rating` layout.

Grids are flat uint8 arrays of size*size cells in row-major order: 0 is a blank, 1..size are
digits. Tokens (`to_tokens`): PAD 0 (never produced), blank 1, digit d -> d + 1; the vocabulary
is size + 2 (11 for 9x9, as the official build_sudoku_dataset.py).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import math
import os
import random
from typing import Iterable, Iterator, Sequence

import numpy as np
from etils import epath

from trm_jax import paths

BOX_SHAPES = {4: (2, 2), 6: (2, 3), 9: (3, 3)}  # box rows x box cols
CSV_HEADER = ("source", "question", "answer", "rating")
BLANK_CHAR = "."

PathLike = str | os.PathLike


def vocab_size(size: int) -> int:
  return size + 2


# ----------------------------------------------------------------------------------------------
# The puzzle CSV layout shared with Maze-Hard.


@dataclasses.dataclass(frozen=True, eq=False)
class CsvRows:
  """Raw columns of a puzzle CSV; `lines[i]` is the 1-based file line where row i starts."""

  path: epath.Path
  sources: list[str]
  questions: list[str]
  answers: list[str]
  ratings: list[str]
  lines: list[int]

  def error(self, row: int, message: str) -> ValueError:
    return ValueError(f"{self.path}, line {self.lines[row]}: {message}")


def read_csv_rows(path: PathLike) -> CsvRows:
  """Reads a `source,question,answer,rating` CSV, checking the header and the column count."""
  path = epath.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"puzzle CSV not found: {path}")
  columns = ([], [], [], [])
  lines = []
  # -sig: tolerate a byte-order mark
  with paths.open_text(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != CSV_HEADER:
      raise ValueError(f"{path}, line 1: expected the header {','.join(CSV_HEADER)}, "
                       f"got {','.join(header or [])!r}")
    for row in reader:
      if not row:  # a blank line, e.g. at the end of the file
        continue
      if len(row) != len(CSV_HEADER):
        raise ValueError(f"{path}, line {reader.line_num}: expected {len(CSV_HEADER)} columns "
                         f"({','.join(CSV_HEADER)}), got {len(row)}")
      for column, value in zip(columns, row):
        column.append(value)
      lines.append(reader.line_num)
  if not lines:
    raise ValueError(f"{path}: no puzzles after the header")
  return CsvRows(path, *columns, lines)


def question_rows(lines: Iterable[str]) -> Iterator[tuple[int, str | None, str | None]]:
  """(line, question, problem) for each row of a puzzle CSV's lines: the question column, or
  what is wrong with the row (the header, the column count) and None. For readers that go on
  past a bad row; `read_csv_rows` stops at the first."""
  reader = csv.reader(lines)
  header = next(reader, None)
  if header is None or tuple(h.strip().lstrip("\ufeff") for h in header) != CSV_HEADER:
    yield 1, None, f"expected the header {','.join(CSV_HEADER)}, got {','.join(header or [])!r}"
  for row in reader:
    if not row:
      continue
    if len(row) != len(CSV_HEADER):
      yield reader.line_num, None, (f"expected {len(CSV_HEADER)} columns "
                                    f"({','.join(CSV_HEADER)}), got {len(row)}")
    else:
      yield reader.line_num, row[CSV_HEADER.index("question")], None


def check_lengths(rows: CsvRows, strings: Sequence[str], column: str, length: int) -> None:
  lengths = np.fromiter(map(len, strings), np.int64, count=len(strings))
  bad = np.flatnonzero(lengths != length)
  if bad.size:
    i = int(bad[0])
    raise rows.error(i, f"{column} has {lengths[i]} characters, expected {length}")


def encode_chars(rows: CsvRows, strings: Sequence[str], column: str, table: dict[str, int],
                 length: int) -> np.ndarray:
  """Maps equal-length strings through `table` to uint8 [N, length]; names the first bad char."""
  lut = np.full(256, 255, np.uint8)
  for char, code in table.items():
    lut[ord(char)] = code
  # "replace" keeps one byte per character, so a non-ASCII character becomes an invalid '?'.
  data = np.frombuffer("".join(strings).encode("ascii", "replace"), np.uint8)
  codes = lut[data].reshape(len(strings), length)
  bad = np.argwhere(codes == 255)
  if bad.size:
    i, j = (int(v) for v in bad[0])
    allowed = "".join(sorted(table, key=lambda c: (table[c], c)))
    raise rows.error(i, f"{column} has the character {strings[i][j]!r} at position {j + 1}; "
                        f"allowed: {allowed!r}")
  return codes


def parse_ratings(rows: CsvRows) -> np.ndarray:
  try:
    return np.asarray(rows.ratings).astype(np.float32)
  except ValueError:
    for i, rating in enumerate(rows.ratings):
      try:
        float(rating)
      except ValueError:
        raise rows.error(i, f"rating {rating!r} is not a number") from None
    raise


def format_rating(rating: float) -> str:
  # Integral ratings (the official backtrack counts) stay integers, so int() can parse them.
  return str(int(rating)) if float(rating).is_integer() else repr(float(rating))


def write_csv_rows(path: PathLike, sources: Sequence[str] | None, questions: Sequence[str],
                   answers: Sequence[str], ratings: np.ndarray) -> None:
  if sources is None:
    sources = [""] * len(questions)
  with paths.open_text(epath.Path(path), "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    writer.writerows(zip(sources, questions, answers, map(format_rating, ratings)))


def decode_chars(codes_NxL: np.ndarray, charset: str) -> list[str]:
  """Inverse of `encode_chars` for a charset indexed by code."""
  lut = np.frombuffer(charset.encode("ascii"), np.uint8)
  length = codes_NxL.shape[1]
  data = lut[codes_NxL].tobytes().decode("ascii")
  return [data[i:i + length] for i in range(0, len(data), length)]


# ----------------------------------------------------------------------------------------------
# Reading and writing.


@dataclasses.dataclass(frozen=True, eq=False)
class SudokuSet:
  """Puzzles of one size: `questions`/`answers` uint8 [N, size*size], `ratings` float32 [N]."""

  questions: np.ndarray
  answers: np.ndarray
  ratings: np.ndarray
  size: int
  sources: list[str] | None = None  # the CSV's source column, when read from one

  def __post_init__(self):
    _check_size(self.size)
    n = len(self.questions)
    if self.questions.shape != (n, self.size**2) or self.answers.shape != self.questions.shape:
      raise ValueError(f"questions {self.questions.shape} and answers {self.answers.shape} must "
                       f"both be [N, {self.size**2}]")
    if self.ratings.shape != (n,) or (self.sources is not None and len(self.sources) != n):
      raise ValueError(f"ratings and sources must have one entry per puzzle ({n})")

  def __len__(self) -> int:
    return len(self.questions)


def _check_size(size: int) -> None:
  if size not in BOX_SHAPES:
    raise ValueError(f"Sudoku size {size} is not one of {sorted(BOX_SHAPES)}")


def read_csv(path: PathLike) -> SudokuSet:
  """Reads and validates an official-format Sudoku CSV ('.' or '0' = blank).

  Every row is checked (length, characters, the answer a complete valid grid that agrees with
  the givens); the first problem raises ValueError naming the file and its 1-based line.
  """
  rows = read_csv_rows(path)
  length = len(rows.questions[0])
  size = math.isqrt(length)
  if size * size != length or size not in BOX_SHAPES:
    raise rows.error(0, f"question has {length} characters; expected "
                        f"{', '.join(str(s * s) for s in BOX_SHAPES)} (a 4x4, 6x6 or 9x9 grid)")
  check_lengths(rows, rows.questions, "question", length)
  check_lengths(rows, rows.answers, "answer", length)
  digits = {str(d): d for d in range(1, size + 1)}
  questions = encode_chars(rows, rows.questions, "question", {".": 0, "0": 0, **digits}, length)
  answers = encode_chars(rows, rows.answers, "answer", digits, length)

  bad = np.flatnonzero(~_valid_solutions(answers, size))
  if bad.size:
    i = int(bad[0])
    raise rows.error(i, f"answer is not a valid solution: {_violation(answers[i], size)}")
  clash = (questions != 0) & (questions != answers)
  bad = np.flatnonzero(clash.any(axis=1))
  if bad.size:
    i = int(bad[0])
    j = int(np.argmax(clash[i]))
    raise rows.error(i, f"answer has {answers[i, j]} at position {j + 1} (row {j // size + 1}, "
                        f"column {j % size + 1}) where the question gives {questions[i, j]}")
  return SudokuSet(questions, answers, parse_ratings(rows), size, rows.sources)


def parse_question(text: str, size: int) -> np.ndarray:
  """One puzzle written as the CSV's question column: size*size characters, digits 1..size and
  '.' or '0' for blanks, row by row. Cell values uint8 [size*size] (0 blank); ValueError saying
  what is wrong (wrong length, a character outside the digits, a digit given twice in a unit)."""
  _check_size(size)
  if len(text) != size * size:
    raise ValueError(f"{len(text)} characters, expected {size * size} (a {size}x{size} grid)")
  table = {".": 0, "0": 0, **{str(d): d for d in range(1, size + 1)}}
  bad = next((j for j, char in enumerate(text) if char not in table), None)
  if bad is not None:
    raise ValueError(f"the character {text[bad]!r} at position {bad + 1} is not a digit "
                     f"1..{size} or a blank ('.' or '0')")
  cells = np.array([table[char] for char in text], np.uint8)
  repeated = _repeated_digit(cells, size)
  if repeated:
    raise ValueError(f"the givens clash: {repeated}")
  return cells


def write_csv(path: PathLike, sudoku_set: SudokuSet) -> None:
  """Writes the official format ('.' blanks); `read_csv` reads it back unchanged."""
  charset = BLANK_CHAR + "".join(str(d) for d in range(1, sudoku_set.size + 1))
  write_csv_rows(path, sudoku_set.sources, decode_chars(sudoku_set.questions, charset),
                 decode_chars(sudoku_set.answers, charset), sudoku_set.ratings)


# ----------------------------------------------------------------------------------------------
# Validity.


def _boxes(grids_NxSxS: np.ndarray, size: int) -> np.ndarray:
  """The cells of box k (reading order) as row k: [N, size, size]."""
  box_rows, box_cols = BOX_SHAPES[size]
  boxes = grids_NxSxS.reshape(-1, size // box_rows, box_rows, size // box_cols, box_cols)
  return boxes.transpose(0, 1, 3, 2, 4).reshape(-1, size, size)


def _valid_solutions(grids_NxL: np.ndarray, size: int) -> np.ndarray:
  grids = np.asarray(grids_NxL).reshape(-1, size, size)
  # One bit per digit; anything outside 1..size sets bit 0, so its units can never be full.
  bits = np.left_shift(np.uint16(1),
                      np.where((grids >= 1) & (grids <= size), grids, 0).astype(np.uint16))
  full = (1 << (size + 1)) - 2  # bits 1..size
  # size cells whose bits OR to all size digit bits hold each digit exactly once.
  return ((np.bitwise_or.reduce(bits, axis=2) == full).all(axis=1)
          & (np.bitwise_or.reduce(bits, axis=1) == full).all(axis=1)
          & (np.bitwise_or.reduce(_boxes(bits, size), axis=2) == full).all(axis=1))


def is_valid_solution(grid, size: int) -> bool:
  """Whether `grid` ([size*size] or [size, size]) is a complete grid obeying every unit."""
  _check_size(size)
  grid = np.asarray(grid)
  return grid.size == size * size and bool(_valid_solutions(grid.reshape(1, -1), size)[0])


def _repeated_digit(grid_L: np.ndarray, size: int) -> str | None:
  """Where a digit occurs twice in one unit (blanks aside), or None."""
  grid = grid_L.reshape(size, size)
  for kind, units in zip(("row", "column", "box"), (grid, grid.T, _boxes(grid[None], size)[0])):
    for index, unit in enumerate(units):
      values, counts = np.unique(unit[unit > 0], return_counts=True)
      if (counts > 1).any():
        return f"{kind} {index + 1} repeats the digit {values[counts > 1][0]}"
  return None


def _violation(grid_L: np.ndarray, size: int) -> str:
  """A readable reason why a complete grid is not a solution."""
  return (_repeated_digit(grid_L, size)
          or f"it is not a complete grid of digits 1..{size}")


# ----------------------------------------------------------------------------------------------
# Augmentation.


_AUGMENT_CHUNK = 1 << 16


def augment_many(rng: np.random.Generator, questions_NxL: np.ndarray, answers_NxL: np.ndarray,
                 size: int, num_aug: int) -> tuple[np.ndarray, np.ndarray]:
  """`num_aug` random augmentations of each puzzle, as the official `shuffle_sudoku`.

  Each augmentation is a digit permutation (blank stays 0), a transpose with probability 1/2
  (square boxes only: it would break 2x3 boxes), a band shuffle with a row shuffle inside each
  band, and a stack shuffle with a column shuffle inside each stack; question and answer get
  the same transform. Returns uint8 [N*num_aug, size*size], puzzle i's augmentations in rows
  i*num_aug ... (i+1)*num_aug - 1.
  """
  _check_size(size)
  questions = np.asarray(questions_NxL, np.uint8).reshape(-1, size * size)
  answers = np.asarray(answers_NxL, np.uint8).reshape(-1, size * size)
  puzzle_of = np.repeat(np.arange(len(questions)), num_aug)
  out_questions = np.empty((len(puzzle_of), size * size), np.uint8)
  out_answers = np.empty_like(out_questions)
  # Chunks bound the int64 index arrays (a million augmentations at once would take 650 MB).
  for start in range(0, len(puzzle_of), _AUGMENT_CHUNK):
    rows = puzzle_of[start:start + _AUGMENT_CHUNK, None]
    sources, digit_maps = _random_transforms(rng, len(rows), size)
    out = slice(start, start + len(rows))
    out_questions[out] = np.take_along_axis(digit_maps, questions[rows, sources], axis=1)
    out_answers[out] = np.take_along_axis(digit_maps, answers[rows, sources], axis=1)
  return out_questions, out_answers


def _random_transforms(rng: np.random.Generator, num: int, size: int):
  """(source cell of every new cell int64 [num, L], digit map uint8 [num, size + 1])."""
  box_rows, box_cols = BOX_SHAPES[size]
  digit_maps = np.zeros((num, size + 1), np.uint8)
  digit_maps[:, 1:] = rng.permuted(np.tile(np.arange(1, size + 1, dtype=np.uint8), (num, 1)),
                                   axis=1)
  transpose = rng.random(num) < 0.5 if box_rows == box_cols else np.zeros(num, bool)
  row_perm = _grouped_permutations(rng, num, size // box_rows, box_rows)
  col_perm = _grouped_permutations(rng, num, size // box_cols, box_cols)
  # New cell (i, j) takes old (row_perm[i], col_perm[j]) of the grid, transposed or not.
  r, c = row_perm[:, :, None], col_perm[:, None, :]
  sources = np.where(transpose[:, None, None], c * size + r, r * size + c)
  return sources.reshape(num, size * size), digit_maps


def _grouped_permutations(rng: np.random.Generator, num: int, groups: int, width: int):
  """Permutations of range(groups*width) that move whole groups and shuffle inside each."""
  group_order = np.argsort(rng.random((num, groups)), axis=1)
  inside = np.argsort(rng.random((num, groups, width)), axis=2)
  # int16 (not argsort's int64): the index arithmetic on [num, L] arrays is memory bound.
  return (group_order[:, :, None] * width + inside).reshape(num, groups * width).astype(np.int16)


def augment(rng: np.random.Generator, question, answer, size: int):
  """One random augmentation (see `augment_many`); keeps the input's shape."""
  question = np.asarray(question)
  q, a = augment_many(rng, question.reshape(1, -1), np.asarray(answer).reshape(1, -1), size, 1)
  return q[0].reshape(question.shape), a[0].reshape(question.shape)


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


def to_tokens(grid) -> np.ndarray:
  """Cell values (0 blank, 1..size) -> tokens (blank 1, digit d -> d + 1), int32."""
  return np.asarray(grid).astype(np.int32) + 1
