"""Puzzles in their tasks' own formats, for `python -m trm_jax.solve`: reading a file into
encoded puzzles (with an error line per invalid one, naming where it is) and printing a
predicted grid back in that format. Sudoku: lines of N*N characters or the official CSV; maze:
the official Maze-Hard CSV; ARC: a kaggle task or challenges JSON."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from typing import Any

import numpy as np

FORMATS = ("sudoku", "maze", "arc")
UNKNOWN_TOKEN = "?"  # a PAD token where a cell should be
STDIN = "<stdin>"  # the name of puzzles read from standard input


@dataclasses.dataclass(frozen=True)
class Puzzle:
  where: str          # e.g. "puzzles.txt, line 3"
  tokens: np.ndarray  # int32 [seq_len], the encoded input



def sudoku_size(spec) -> int:
  from trm_jax.data import sudoku
  size = math.isqrt(spec.seq_len)
  if size * size != spec.seq_len or size not in sudoku.BOX_SHAPES:
    raise ValueError(f"the run's seq_len {spec.seq_len} is not a Sudoku grid "
                     f"({sorted(s * s for s in sudoku.BOX_SHAPES)})")
  return size


def maze_side(spec) -> int:
  side = math.isqrt(spec.seq_len)
  if side * side != spec.seq_len:
    raise ValueError(f"the run's seq_len {spec.seq_len} is not a square maze")
  return side


def _read_rows(rows, name: str, encode) -> tuple[list[Puzzle], list[str]]:
  """Puzzles and error lines from (line, question, problem) rows; `encode(question)` gives the
  tokens or raises ValueError saying what is wrong."""
  puzzles, errors = [], []
  for line, question, problem in rows:
    where = f"{name}, line {line}"
    try:
      if problem:
        raise ValueError(problem)
      puzzles.append(Puzzle(where, encode(question)))
    except ValueError as error:
      errors.append(f"{where}: {error}")
  return puzzles, errors


def read_sudoku(text: str, name: str, size: int) -> tuple[list[Puzzle], list[str]]:
  """Puzzles and error lines of a file of Sudoku lines (or the official CSV)."""
  from trm_jax.data import puzzle_csv, sudoku
  lines = text.splitlines(keepends=True)
  if lines and lines[0].lstrip("\ufeff").startswith(puzzle_csv.CSV_HEADER[0] + ","):
    rows = puzzle_csv.question_rows(lines)
  else:
    rows = ((n, line.strip(), None) for n, line in enumerate(lines, start=1)
            if line.strip() and not line.lstrip().startswith("#"))
  return _read_rows(rows, name, lambda q: sudoku.to_tokens(sudoku.parse_question(q, size)))


def read_maze(text: str, name: str, side: int) -> tuple[list[Puzzle], list[str]]:
  """Puzzles and error lines of an official maze CSV."""
  from trm_jax.data import maze, puzzle_csv
  return _read_rows(puzzle_csv.question_rows(text.splitlines(keepends=True)), name,
                    lambda q: maze.to_tokens(maze.parse_question(q, side)))


def read_arc(text: str, name: str, task_id: str | None) -> tuple[dict[str, Any], list[str]]:
  """Tasks ({id: arc.ArcTask}) and error lines of a kaggle challenges JSON, or of one task's
  JSON, whose id is `task_id` or else the file name without its extension."""
  from trm_jax.data import arc
  try:
    raw = json.loads(text)
  except json.JSONDecodeError as error:
    return {}, [f"{name}, line {error.lineno}, column {error.colno}: malformed JSON: {error.msg}"]
  if isinstance(raw, dict) and isinstance(raw.get("test"), list):  # one task
    task_id = task_id or (None if name == STDIN else pathlib.Path(name).stem)
    if not task_id:
      return {}, [f"{name}: a single task read from stdin needs its id (--task_id)"]
    raw = {task_id: raw}
  elif not isinstance(raw, dict):
    return {}, [f"{name}: expected a task object or an object mapping task ids to tasks, got "
                f"{type(raw).__name__}"]
  tasks, errors = {}, []
  for tid, value in raw.items():
    try:
      tasks[tid] = arc.task_from_json(tid, value, f"{name}: task {tid!r}")
    except ValueError as error:
      errors.append(str(error))
  if not raw:
    errors.append(f"{name}: no tasks")
  return tasks, errors



def sudoku_rows(tokens: np.ndarray, size: int) -> list[str]:
  """Rows of digits, '.' for a blank, with a rule between boxes."""
  from trm_jax.data import sudoku
  box_rows, box_cols = sudoku.BOX_SHAPES[size]
  chars = [UNKNOWN_TOKEN if t == 0 else sudoku.BLANK_CHAR if t == 1 else str(t - 1)
           for t in np.asarray(tokens).tolist()]
  lines = []
  for r in range(size):
    cells = chars[r * size:(r + 1) * size]
    lines.append(" | ".join(" ".join(cells[c:c + box_cols]) for c in range(0, size, box_cols)))
    if (r + 1) % box_rows == 0 and r + 1 < size:
      lines.append("-+-".join("-" * (2 * box_cols - 1) for _ in range(size // box_cols)))
  return lines


def maze_rows(tokens: np.ndarray, side: int) -> list[str]:
  from trm_jax.data import maze
  chars = "".join(UNKNOWN_TOKEN if t == 0 else maze.CHARSET[t - 1]
                  for t in np.asarray(tokens).tolist())
  return [chars[r * side:(r + 1) * side] for r in range(side)]


def arc_rows(grid: np.ndarray | None) -> list[str]:
  if grid is None:
    return ["(no grid: the prediction's top-left cell is not a colour)"]
  return ["".join(str(v) for v in row) for row in np.asarray(grid).tolist()]
