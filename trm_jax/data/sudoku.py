"""Sudoku data: the official CSV, validity, validity-preserving augmentation, tokens.

numpy and the standard library only, so the TFDS builder and the input pipeline share one
implementation without pulling in TensorFlow or jax. The CSV layout is `puzzle_csv`'s (Maze-Hard
uses it too); the solver and the generator are `sudoku_solver`'s.

Grids are flat uint8 arrays of size*size cells in row-major order: 0 is a blank, 1..size are
digits. Tokens (`to_tokens`): PAD 0 (never produced), blank 1, digit d -> d + 1; the vocabulary
is size + 2 (11 for 9x9, as the official build_sudoku_dataset.py).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from trm_jax.data.puzzle_csv import (PathLike, check_lengths, decode_chars, encode_chars,
                                     parse_ratings, read_csv_rows, write_csv_rows)

BOX_SHAPES = {4: (2, 2), 6: (2, 3), 9: (3, 3)}  # box rows x box cols
BLANK_CHAR = "."


def vocab_size(size: int) -> int:
  return size + 2


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


def to_tokens(grid) -> np.ndarray:
  """Cell values (0 blank, 1..size) -> tokens (blank 1, digit d -> d + 1), int32."""
  return np.asarray(grid).astype(np.int32) + 1
