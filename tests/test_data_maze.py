"""Maze data: CSV reading and validation, shortest paths, dihedral transforms, generator.

Expected values are hand-made mazes (path lengths counted by hand) or come from the small
independent breadth-first search below, never from the module under test.
"""

import collections

import numpy as np
import pytest

from trm_jax.data import maze

# A single corridor: 4 + 2 + 4 + 2 + 4 = 16 moves from S to G, so 15 'o' cells.
CORRIDOR = ["#######",
            "#S    #",
            "##### #",
            "#     #",
            "# #####",
            "#    G#",
            "#######"]
CORRIDOR_PATH = ["#######",
                 "#Soooo#",
                 "#####o#",
                 "#ooooo#",
                 "#o#####",
                 "#ooooG#",
                 "#######"]
# A loop: the top route takes 4 moves, the bottom one 8.
LOOP = ["#######",
        "#S   G#",
        "# ### #",
        "#     #",
        "#######",
        "#######",
        "#######"]
LOOP_SHORT = ["#######",
              "#SoooG#",
              "# ### #",
              "#     #",
              "#######",
              "#######",
              "#######"]
LOOP_LONG = ["#######",
             "#S   G#",
             "#o###o#",
             "#ooooo#",
             "#######",
             "#######",
             "#######"]


def _codes(rows):
  return np.array([["# SGo".index(c) for c in row] for row in rows], np.uint8)


def _text(rows):
  return "".join(rows)


def _bfs_length(grid):
  """Independent BFS: moves from S to G through non-wall cells (-1 if unreachable)."""
  grid = np.asarray(grid)
  start = tuple(np.argwhere(grid == 2)[0])
  goal = tuple(np.argwhere(grid == 3)[0])
  dist = {start: 0}
  queue = collections.deque([start])
  while queue:
    r, c = queue.popleft()
    for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
      if (0 <= nr < grid.shape[0] and 0 <= nc < grid.shape[1] and grid[nr, nc] != 0
          and (nr, nc) not in dist):
        dist[nr, nc] = dist[r, c] + 1
        queue.append((nr, nc))
  return dist.get(goal, -1)


def _open_adjacencies(grid):
  """Pairs of side-by-side non-wall cells."""
  free = grid != 0
  return (free[1:] & free[:-1]).sum() + (free[:, 1:] & free[:, :-1]).sum()


def _write(path, rows):
  path.write_text("\n".join(["source,question,answer,rating"] + rows) + "\n")
  return path


# ----------------------------------------------------------------------------------------------
# Paths and transforms.


def test_shortest_path_length_hand_made():
  assert maze.shortest_path_length(_codes(CORRIDOR)) == 16
  assert maze.shortest_path_length(_codes(LOOP)) == 4
  walled = _codes(CORRIDOR)
  walled[2, 5] = 0
  assert maze.shortest_path_length(walled) == -1
  with pytest.raises(ValueError, match="exactly one 'S'"):
    maze.shortest_path_length(_codes([r.replace("S", " ") for r in CORRIDOR]))


def test_is_shortest_path_hand_made():
  assert maze.is_shortest_path(_codes(CORRIDOR), _codes(CORRIDOR_PATH))
  assert maze.is_shortest_path(_codes(LOOP), _codes(LOOP_SHORT))
  assert not maze.is_shortest_path(_codes(LOOP), _codes(LOOP_LONG))
  assert not maze.is_shortest_path(_codes(LOOP), _codes(LOOP))  # nothing marked
  gap = _codes(CORRIDOR_PATH)
  gap[3, 3] = 1
  assert not maze.is_shortest_path(_codes(CORRIDOR), gap)
  extra = _codes(LOOP_SHORT)
  extra[3, 3] = 4
  assert not maze.is_shortest_path(_codes(LOOP), extra)


# The official numbering (dataset/common.py), written out independently.
OFFICIAL_DIHEDRAL = [lambda x: x, lambda x: np.rot90(x, 1), lambda x: np.rot90(x, 2),
                     lambda x: np.rot90(x, 3), np.fliplr, np.flipud, lambda x: x.T,
                     lambda x: np.fliplr(np.rot90(x, 1))]


@pytest.mark.parametrize("k", range(8))
def test_dihedral_keeps_the_shortest_path(k):
  question, answer = _codes(CORRIDOR), _codes(CORRIDOR_PATH)
  q, a = maze.dihedral(question, k), maze.dihedral(answer, k)
  np.testing.assert_array_equal(q, OFFICIAL_DIHEDRAL[k](question))
  np.testing.assert_array_equal(a, OFFICIAL_DIHEDRAL[k](answer))
  assert maze.shortest_path_length(q) == 16
  assert maze.is_shortest_path(q, a)
  assert not maze.is_shortest_path(maze.dihedral(_codes(LOOP), k),
                                   maze.dihedral(_codes(LOOP_LONG), k))
  np.testing.assert_array_equal(maze.inverse_dihedral(a, k), answer)


# ----------------------------------------------------------------------------------------------
# Generation.


@pytest.mark.parametrize("side,min_length", [(9, 0), (15, 30), (30, 110)])
def test_generated_mazes(side, min_length):
  mazes = maze.generate(20, side, np.random.default_rng(0), min_path_length=min_length)
  assert mazes.side == side and mazes.questions.shape == (20, side * side)
  for question, answer, rating in zip(mazes.questions, mazes.answers, mazes.ratings):
    q, a = question.reshape(side, side), answer.reshape(side, side)
    assert (q == 2).sum() == 1 and (q == 3).sum() == 1 and (q == 4).sum() == 0
    length = _bfs_length(q)
    assert length == rating >= max(min_length, 1)
    assert (a == 4).sum() == length - 1
    assert maze.is_shortest_path(q, a)
    # Walled border; a perfect maze is a tree: one fewer open adjacency than open cells.
    assert (q[0] == 0).all() and (q[-1] == 0).all() and (q[:, 0] == 0).all()
    assert _open_adjacencies(q) == (q != 0).sum() - 1


def test_generated_mazes_with_loops():
  mazes = maze.generate(20, 15, np.random.default_rng(1), loop_fraction=0.3)
  loops = 0
  for question, answer in zip(mazes.questions, mazes.answers):
    q = question.reshape(15, 15)
    assert maze.is_shortest_path(q, answer.reshape(15, 15))
    loops += _open_adjacencies(q) - ((q != 0).sum() - 1)
  assert loops > 0


def test_generate_is_seeded_and_reports_impossible_filters():
  first = maze.generate(10, 11, np.random.default_rng(3))
  again = maze.generate(10, 11, np.random.default_rng(3))
  other = maze.generate(10, 11, np.random.default_rng(4))
  np.testing.assert_array_equal(first.questions, again.questions)
  np.testing.assert_array_equal(first.answers, again.answers)
  assert not np.array_equal(first.questions, other.questions)
  with pytest.raises(RuntimeError, match="50 moves"):
    maze.generate(1, 5, np.random.default_rng(0), min_path_length=50, max_attempts=10)


def test_to_tokens():
  tokens = maze.to_tokens(np.arange(5, dtype=np.uint8))
  assert tokens.dtype == np.int32
  np.testing.assert_array_equal(tokens, [1, 2, 3, 4, 5])
  assert maze.VOCAB_SIZE == 6


# ----------------------------------------------------------------------------------------------
# CSV.


def test_read_hand_written_csv(tmp_path):
  path = _write(tmp_path / "m.csv", [f"a,{_text(CORRIDOR)},{_text(CORRIDOR_PATH)},16",
                                     f"b,{_text(LOOP)},{_text(LOOP_SHORT)},4"])
  mazes = maze.read_csv(path)
  assert mazes.side == 7 and len(mazes) == 2 and mazes.sources == ["a", "b"]
  np.testing.assert_array_equal(mazes.questions[0], _codes(CORRIDOR).reshape(-1))
  np.testing.assert_array_equal(mazes.answers[1], _codes(LOOP_SHORT).reshape(-1))
  np.testing.assert_array_equal(mazes.ratings, [16, 4])


def test_csv_round_trip(tmp_path):
  mazes = maze.generate(5, 30, np.random.default_rng(2), min_path_length=100)
  path = tmp_path / "round.csv"
  maze.write_csv(path, mazes)
  assert len(path.read_text().splitlines()[1].split(",")[1]) == 900
  back = maze.read_csv(path)
  assert back.side == 30
  np.testing.assert_array_equal(back.questions, mazes.questions)
  np.testing.assert_array_equal(back.answers, mazes.answers)
  np.testing.assert_array_equal(back.ratings, mazes.ratings)


def _row(question, answer):
  return f"x,{_text(question)},{_text(answer)},1"


def _replace(rows, r, c, char):
  rows = list(rows)
  rows[r] = rows[r][:c] + char + rows[r][c + 1:]
  return rows


@pytest.mark.parametrize("row,message", [
    (_row(_replace(CORRIDOR, 1, 3, "x"), CORRIDOR_PATH),
     "question has the character 'x' at position 11"),
    (_row(CORRIDOR, _replace(CORRIDOR_PATH, 1, 3, ".")),
     "answer has the character '.' at position 11"),
    (_row(_replace(CORRIDOR, 3, 3, "S"), CORRIDOR_PATH), "question has 2 'S' cells"),
    (_row(_replace(CORRIDOR, 5, 5, " "), CORRIDOR_PATH), "question has 0 'G' cells"),
    (_row(CORRIDOR, _replace(CORRIDOR_PATH, 2, 1, "o")),
     "answer has 'o' at row 3, column 2 where the question has '#'"),
    (_row(LOOP, LOOP_LONG), "marks 7 'o' cells, but a shortest path from S to G has 4 moves"),
    (_row(LOOP, _replace(_replace(LOOP_SHORT, 1, 3, " "), 3, 3, "o")),
     "the 3 'o' cells do not form a path from S to G"),
    (_row(_replace(CORRIDOR, 2, 5, "#"), _replace(CORRIDOR_PATH, 2, 5, "#")),
     "G cannot be reached from S"),
    (_row(CORRIDOR, CORRIDOR_PATH)[:-5], "expected 4 columns"),
    (f"x,{_text(CORRIDOR)[:48]},{_text(CORRIDOR_PATH)[:48]},1",
     "question has 48 characters, expected 49"),
])
def test_malformed_rows_name_file_and_line(tmp_path, row, message):
  path = _write(tmp_path / "bad.csv", [_row(CORRIDOR, CORRIDOR_PATH), row])
  with pytest.raises(ValueError, match=message) as info:
    maze.read_csv(path)
  assert f"{path}, line 3:" in str(info.value)


def test_non_square_length(tmp_path):
  path = _write(tmp_path / "bad.csv", [f"x,{'#' * 48},{'#' * 48},1"])
  with pytest.raises(ValueError, match=r"bad.csv, line 2: question has 48 characters, not the "
                                       r"square"):
    maze.read_csv(path)


def test_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere.csv"):
    maze.read_csv(tmp_path / "nowhere.csv")
