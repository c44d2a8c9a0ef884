"""Maze data: the official Maze-Hard CSV, shortest-path checks and a random maze generator.

numpy and the standard library only (see sudoku.py). The CSV layout is puzzle_csv.py's, the
Sudoku columns `source,question,answer,rating`; question and answer are side*side characters (30x30 = 900 for
Maze-Hard) over CHARSET: '#' wall, ' ' open, 'S' start, 'G' goal, and in the answer 'o' on the
cells of a shortest path strictly between S and G (S and G keep their letters).

Grids are uint8 codes, the index into CHARSET, row-major. Tokens (`to_tokens`): code + 1 (PAD 0,
vocabulary 6), as the official build_maze_dataset.py. A path's length is its number of moves,
so a path of length L has L - 1 'o' cells.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random

import numpy as np

from trm_jax.data import puzzle_csv
# Maze augmentation is the 8 dihedral transforms in the official numbering, shared with ARC.
from trm_jax.data.arc import dihedral, inverse_dihedral  # noqa: F401  (re-exported)

CHARSET = "# SGo"
WALL, OPEN, START, GOAL, PATH = range(len(CHARSET))
VOCAB_SIZE = len(CHARSET) + 1


@dataclasses.dataclass(frozen=True, eq=False)
class MazeSet:
  """Mazes of one size: `questions`/`answers` uint8 [N, side*side], `ratings` float32 [N]."""

  questions: np.ndarray
  answers: np.ndarray
  ratings: np.ndarray
  side: int
  sources: list[str] | None = None  # the CSV's source column, when read from one

  def __post_init__(self):
    n = len(self.questions)
    if self.questions.shape != (n, self.side**2) or self.answers.shape != self.questions.shape:
      raise ValueError(f"questions {self.questions.shape} and answers {self.answers.shape} must "
                       f"both be [N, {self.side**2}]")
    if self.ratings.shape != (n,) or (self.sources is not None and len(self.sources) != n):
      raise ValueError(f"ratings and sources must have one entry per maze ({n})")

  def __len__(self) -> int:
    return len(self.questions)


# ----------------------------------------------------------------------------------------------
# Reading and writing.


def read_csv(path: puzzle_csv.PathLike) -> MazeSet:
  """Reads and validates an official-format maze CSV.

  Every row is checked (a square grid of one size for the whole file, allowed characters,
  exactly one S and one G, the answer equal to the question but for 'o' on open cells, and
  those cells a shortest S-G path); the first problem raises ValueError naming the file and its
  1-based line.
  """
  rows = puzzle_csv.read_csv_rows(path)
  length = len(rows.questions[0])
  side = math.isqrt(length)
  if side * side != length or side < 2:
    raise rows.error(0, f"question has {length} characters, not the square of a side >= 2")
  puzzle_csv.check_lengths(rows, rows.questions, "question", length)
  puzzle_csv.check_lengths(rows, rows.answers, "answer", length)
  codes = {char: code for code, char in enumerate(CHARSET)}
  questions = puzzle_csv.encode_chars(rows, rows.questions, "question",
                                  {c: v for c, v in codes.items() if v != PATH}, length)
  answers = puzzle_csv.encode_chars(rows, rows.answers, "answer", codes, length)

  for code in (START, GOAL):
    counts = (questions == code).sum(axis=1)
    bad = np.flatnonzero(counts != 1)
    if bad.size:
      i = int(bad[0])
      raise rows.error(i, f"question has {counts[i]} {CHARSET[code]!r} cells, expected one")
  changed = (answers != questions) & ~((questions == OPEN) & (answers == PATH))
  bad = np.flatnonzero(changed.any(axis=1))
  if bad.size:
    i = int(bad[0])
    r, c = divmod(int(np.argmax(changed[i])), side)
    raise rows.error(i, f"answer has {CHARSET[answers[i, r * side + c]]!r} at row {r + 1}, "
                        f"column {c + 1} where the question has "
                        f"{CHARSET[questions[i, r * side + c]]!r}")
  for i in range(len(questions)):
    problem = _path_problem(questions[i].reshape(side, side), answers[i].reshape(side, side))
    if problem:
      raise rows.error(i, problem)
  return MazeSet(questions, answers, puzzle_csv.parse_ratings(rows), side, rows.sources)


def parse_question(text: str, side: int) -> np.ndarray:
  """One maze written as the CSV's question column: side*side characters of '# SG', row by row,
  exactly one S and one G. Codes uint8 [side*side]; ValueError saying what is wrong."""
  if len(text) != side * side:
    raise ValueError(f"{len(text)} characters, expected {side * side} (a {side}x{side} maze)")
  allowed = CHARSET.replace(CHARSET[PATH], "")
  bad = next((j for j, char in enumerate(text) if char not in allowed), None)
  if bad is not None:
    raise ValueError(f"the character {text[bad]!r} at row {bad // side + 1}, column "
                     f"{bad % side + 1} is not one of {allowed!r}")
  for code in (START, GOAL):
    if text.count(CHARSET[code]) != 1:
      raise ValueError(f"{text.count(CHARSET[code])} {CHARSET[code]!r} cells, expected one")
  return np.array([CHARSET.index(char) for char in text], np.uint8)


def write_csv(path: puzzle_csv.PathLike, maze_set: MazeSet) -> None:
  """Writes the official format; `read_csv` reads it back unchanged."""
  puzzle_csv.write_csv_rows(path, maze_set.sources, puzzle_csv.decode_chars(maze_set.questions, CHARSET),
                        puzzle_csv.decode_chars(maze_set.answers, CHARSET), maze_set.ratings)


# ----------------------------------------------------------------------------------------------
# Paths.


@functools.cache
def _neighbors(height: int, width: int) -> tuple[tuple[int, ...], ...]:
  """Flat indices of the up, down, left and right neighbours of every cell."""
  def around(cell):
    r, c = divmod(cell, width)
    return tuple(rr * width + cc for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1))
                 if 0 <= rr < height and 0 <= cc < width)
  return tuple(around(cell) for cell in range(height * width))


def _distances(passable: list[bool], neighbors, start: int) -> list[int]:
  """Breadth-first move counts from `start` over passable cells (-1 = unreachable)."""
  dist = [-1] * len(passable)
  dist[start] = 0
  frontier = [start]
  steps = 0
  while frontier:
    steps += 1
    reached = []
    for cell in frontier:
      for nb in neighbors[cell]:
        if passable[nb] and dist[nb] < 0:
          dist[nb] = steps
          reached.append(nb)
    frontier = reached
  return dist


def _endpoints(grid_2d: np.ndarray) -> tuple[int, int]:
  """Flat indices of the single S and G; ValueError when either is missing or repeated."""
  flat = np.asarray(grid_2d).reshape(-1)
  found = []
  for code in (START, GOAL):
    cells = np.flatnonzero(flat == code)
    if len(cells) != 1:
      raise ValueError(f"a maze needs exactly one {CHARSET[code]!r}, found {len(cells)}")
    found.append(int(cells[0]))
  return found[0], found[1]


def shortest_path_length(question_2d: np.ndarray) -> int:
  """Moves on a shortest S-G path through non-wall cells (-1 when G is unreachable)."""
  question_2d = np.asarray(question_2d)
  start, goal = _endpoints(question_2d)
  passable = (question_2d.reshape(-1) != WALL).tolist()
  return _distances(passable, _neighbors(*question_2d.shape), start)[goal]


def _path_problem(question_2d: np.ndarray, answer_2d: np.ndarray) -> str | None:
  """Why the answer's 'o' cells are not a shortest S-G path of the question, or None."""
  if question_2d.shape != answer_2d.shape:
    return f"answer shape {answer_2d.shape} differs from question shape {question_2d.shape}"
  try:
    start, goal = _endpoints(question_2d)
  except ValueError as e:
    return str(e)
  if (question_2d == PATH).any():
    return "the question already has 'o' cells"
  if ((answer_2d != question_2d) & ~((question_2d == OPEN) & (answer_2d == PATH))).any():
    return "the answer changes cells other than open cells to 'o'"
  neighbors = _neighbors(*question_2d.shape)
  length = _distances((question_2d.reshape(-1) != WALL).tolist(), neighbors, start)[goal]
  if length < 0:
    return "G cannot be reached from S"
  marked = int((answer_2d == PATH).sum())
  on_path = np.isin(answer_2d.reshape(-1), (START, GOAL, PATH)).tolist()
  along = _distances(on_path, neighbors, start)[goal]
  if marked != length - 1:
    return (f"the answer marks {marked} 'o' cells, but a shortest path from S to G has {length} "
            f"moves ({length - 1} 'o' cells)")
  if along != length:
    return f"the {marked} 'o' cells do not form a path from S to G"
  return None


def is_shortest_path(question_2d: np.ndarray, answer_2d: np.ndarray) -> bool:
  """Whether `answer_2d` is `question_2d` with one shortest S-G path marked 'o'."""
  return _path_problem(np.asarray(question_2d), np.asarray(answer_2d)) is None


# ----------------------------------------------------------------------------------------------
# Generation.


def _carve(side: int, py_rng: random.Random, loop_fraction: float) -> list[int]:
  """A random perfect maze (recursive backtracker) on the odd lattice of a walled square.

  Rooms sit at odd (row, column); for an even side the last row and column stay wall.
  `loop_fraction` of the remaining walls between two rooms are then opened, adding loops.
  """
  grid = [WALL] * (side * side)
  rooms = [(r, c) for r in range(1, side - 1, 2) for c in range(1, side - 1, 2)]
  first = py_rng.choice(rooms)
  grid[first[0] * side + first[1]] = OPEN
  stack = [first]
  while stack:
    r, c = stack[-1]
    options = [(r + dr, c + dc) for dr, dc in ((-2, 0), (2, 0), (0, -2), (0, 2))
               if 0 < r + dr < side - 1 and 0 < c + dc < side - 1
               and grid[(r + dr) * side + c + dc] == WALL]
    if not options:
      stack.pop()
      continue
    nr, nc = py_rng.choice(options)
    grid[(r + nr) // 2 * side + (c + nc) // 2] = OPEN
    grid[nr * side + nc] = OPEN
    stack.append((nr, nc))
  if loop_fraction > 0:
    for r, c in rooms:
      for nr, nc in ((r + 2, c), (r, c + 2)):
        between = (r + nr) // 2 * side + (c + nc) // 2
        if (nr < side - 1 and nc < side - 1 and grid[between] == WALL
            and py_rng.random() < loop_fraction):
          grid[between] = OPEN
  return grid


def generate(num: int, side: int, rng: np.random.Generator, min_path_length: int = 0,
             loop_fraction: float = 0.0, max_attempts: int | None = None) -> MazeSet:
  """`num` random mazes whose shortest S-G path has at least `min_path_length` moves.

  Each maze is a perfect maze (`loop_fraction` > 0 opens extra walls, so several shortest paths
  may exist; the answer then marks one). S is a random open cell and G a random open cell at
  least `min_path_length` (and 1) moves away; the rating is the shortest path length. When no
  maze in `max_attempts` (default 100 * num) qualifies, RuntimeError says so.
  """
  if side < 3:
    raise ValueError(f"a maze side must be at least 3, got {side}")
  py_rng = random.Random(int(rng.integers(2**63)))
  neighbors = _neighbors(side, side)
  max_attempts = 100 * max(num, 1) if max_attempts is None else max_attempts
  questions, answers, ratings = [], [], []
  attempts = 0
  while len(questions) < num:
    if attempts == max_attempts:
      raise RuntimeError(f"only {len(questions)} of {num} {side}x{side} mazes reached a path of "
                         f"{min_path_length} moves in {max_attempts} attempts")
    attempts += 1
    grid = _carve(side, py_rng, loop_fraction)
    open_cells = [cell for cell, code in enumerate(grid) if code == OPEN]
    start = py_rng.choice(open_cells)
    dist = _distances([code != WALL for code in grid], neighbors, start)
    far = [cell for cell in open_cells if dist[cell] >= max(min_path_length, 1)]
    if not far:
      continue
    goal = py_rng.choice(far)
    question = list(grid)
    question[start], question[goal] = START, GOAL
    answer = list(question)
    cell = goal
    while dist[cell] > 1:  # walk back one move at a time, the first closer neighbour each time
      cell = next(nb for nb in neighbors[cell] if dist[nb] == dist[cell] - 1)
      answer[cell] = PATH
    questions.append(question)
    answers.append(answer)
    ratings.append(dist[goal])
  shape = (num, side * side)
  return MazeSet(np.array(questions, np.uint8).reshape(shape),
                 np.array(answers, np.uint8).reshape(shape), np.array(ratings, np.float32), side)


def to_tokens(codes) -> np.ndarray:
  """Codes (index into CHARSET) -> tokens code + 1 (PAD 0), int32."""
  return np.asarray(codes).astype(np.int32) + 1
