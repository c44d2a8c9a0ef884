"""Sudoku data: CSV reading and validation, augmentation, solver and generator.

Expected values are hand-made grids or come from the small independent checker and solver
below (plain Python sets), never from the module under test.
"""

import numpy as np
import pytest

from trm_jax.data import sudoku, sudoku_solver

BOXES = {4: (2, 2), 6: (2, 3), 9: (3, 3)}

GRID_4 = "1234341221434321"
GRID_6 = "123456456123231564564231312645645312"
# The Wikipedia example puzzle and its solution.
PUZZLE_9 = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"
GRID_9 = "534678912672195348198342567859761423426853791713924856961537284287419635345286179"
# "AI Escargot", a puzzle that singles alone do not solve.
HARD_9 = "1....7.9..3..2...8..96..5....53..9...1..8...26....4...3......1..4......7..7...3.."


def _grid(text):
  return np.array([0 if c in ".0" else int(c) for c in text], np.uint8)


def _units(size):
  box_rows, box_cols = BOXES[size]
  units = [[r * size + c for c in range(size)] for r in range(size)]
  units += [[r * size + c for r in range(size)] for c in range(size)]
  units += [[(top + i) * size + left + j for i in range(box_rows) for j in range(box_cols)]
            for top in range(0, size, box_rows) for left in range(0, size, box_cols)]
  return units


def _independent_valid(grid, size):
  grid = [int(v) for v in np.asarray(grid).reshape(-1)]
  return all(sorted(grid[i] for i in unit) == list(range(1, size + 1)) for unit in _units(size))


def _independent_solutions(question, size, limit=2):
  """Plain backtracking with sets; the cell with fewest candidates first."""
  cells = [int(v) for v in np.asarray(question).reshape(-1)]
  units_of = [[u for u in _units(size) if i in u] for i in range(size * size)]
  found = []

  def candidates(i):
    used = {cells[j] for unit in units_of[i] for j in unit}
    return [d for d in range(1, size + 1) if d not in used]

  def search():
    blanks = [i for i, v in enumerate(cells) if v == 0]
    if not blanks:
      found.append(list(cells))
      return len(found) >= limit
    options = {i: candidates(i) for i in blanks}
    i = min(blanks, key=lambda i: len(options[i]))
    for d in options[i]:
      cells[i] = d
      if search():
        return True
    cells[i] = 0
    return False

  search()
  return found


def _write(path, rows, header="source,question,answer,rating"):
  path.write_text("\n".join([header] + rows) + "\n")
  return path


# ----------------------------------------------------------------------------------------------
# Validity and solving.


@pytest.mark.parametrize("size,text", [(4, GRID_4), (6, GRID_6), (9, GRID_9)])
def test_hand_made_grids_are_valid(size, text):
  assert _independent_valid(_grid(text), size)
  assert sudoku.is_valid_solution(_grid(text), size)
  assert sudoku.is_valid_solution(_grid(text).reshape(size, size), size)


def test_invalid_grids():
  # Rows and columns are permutations but the 2x2 boxes are not.
  assert not sudoku.is_valid_solution(_grid("1234234134124123"), 4)
  swapped = _grid(GRID_9)
  swapped[[0, 1]] = swapped[[1, 0]]  # row 1 still fine, columns 1 and 2 now repeat
  assert not sudoku.is_valid_solution(swapped, 9)
  blank = _grid(GRID_9)
  blank[40] = 0
  assert not sudoku.is_valid_solution(blank, 9)
  too_big = _grid(GRID_4)
  too_big[0] = 5
  assert not sudoku.is_valid_solution(too_big, 4)
  # A valid 4x4 grid is not a 6x6 one.
  assert not sudoku.is_valid_solution(_grid(GRID_4), 6)


def test_solve_known_puzzles():
  solutions, backtracks = sudoku_solver.solve(_grid(PUZZLE_9), 9)
  assert len(solutions) == 1
  np.testing.assert_array_equal(solutions[0], _grid(GRID_9))
  assert backtracks == 0  # the Wikipedia puzzle falls to singles

  hard = _grid(HARD_9)
  solutions, backtracks = sudoku_solver.solve(hard, 9)
  expected = _independent_solutions(hard, 9)
  assert len(expected) == 1 and len(solutions) == 1
  np.testing.assert_array_equal(solutions[0], expected[0])
  assert backtracks > 0


def test_solve_counts_and_contradictions():
  # An empty 4x4 grid has many solutions: the search stops at max_solutions.
  solutions, _ = sudoku_solver.solve(np.zeros(16, np.uint8), 4, max_solutions=3)
  assert len(solutions) == 3
  assert len({s.tobytes() for s in solutions}) == 3
  assert all(_independent_valid(s, 4) for s in solutions)
  clash = _grid("11" + "." * 14)
  assert sudoku_solver.solve(clash, 4) == ([], 0)
  with pytest.raises(ValueError, match="values in 0..4"):
    sudoku_solver.solve(_grid("5" + "." * 15), 4)


# ----------------------------------------------------------------------------------------------
# Augmentation.


def _puzzle(size):
  """A hand-made puzzle: the hand-made grid with every third cell blank."""
  answer = _grid({4: GRID_4, 6: GRID_6, 9: GRID_9}[size])
  question = answer.copy()
  question[::3] = 0
  return question, answer


@pytest.mark.parametrize("size", [4, 6, 9])
def test_augment_keeps_puzzles_valid(size):
  rng = np.random.default_rng(0)
  question, answer = _puzzle(size)
  for _ in range(100):
    q, a = sudoku.augment(rng, question, answer, size)
    assert q.shape == question.shape and q.dtype == np.uint8
    assert _independent_valid(a, size)
    given = q != 0
    assert given.sum() == (question != 0).sum()
    np.testing.assert_array_equal(q[given], a[given])


@pytest.mark.parametrize("size", [4, 6, 9])
def test_augment_applies_one_transform_to_both(size):
  rng = np.random.default_rng(1)
  _, answer = _puzzle(size)
  for _ in range(50):
    q, a = sudoku.augment(rng, answer, answer, size)
    np.testing.assert_array_equal(q, a)


@pytest.mark.parametrize("size", [4, 6, 9])
def test_augment_covers_the_transforms(size):
  # Only row 1 is given: it must land on every row, transposed onto a column only for square
  # boxes, and its first digit must take every value.
  rng = np.random.default_rng(2)
  _, answer = _puzzle(size)
  question = answer.copy()
  question[size:] = 0
  rows, columns, first_digits = set(), set(), set()
  for _ in range(300):
    q, _ = sudoku.augment(rng, question, answer, size)
    given = np.argwhere(q.reshape(size, size))
    if len(set(given[:, 0])) == 1:
      rows.add(int(given[0, 0]))
    else:
      assert len(set(given[:, 1])) == 1
      columns.add(int(given[0, 1]))
    first_digits.add(int(q.reshape(size, size)[given[0, 0], given[0, 1]]))
  assert rows == set(range(size))
  assert columns == (set(range(size)) if size != 6 else set())
  assert first_digits == set(range(1, size + 1))


def test_augment_many_groups_by_puzzle():
  rng = np.random.default_rng(3)
  answers = np.stack([_grid(GRID_9)] * 3)
  questions = answers.copy()
  for i, blanks in enumerate((10, 30, 50)):
    questions[i, :blanks] = 0
  q, a = sudoku.augment_many(rng, questions, answers, 9, num_aug=4)
  assert q.shape == a.shape == (12, 81)
  np.testing.assert_array_equal((q == 0).sum(axis=1), np.repeat([10, 30, 50], 4))
  assert all(_independent_valid(grid, 9) for grid in a)
  np.testing.assert_array_equal(q[q != 0], a[q != 0])
  assert len({grid.tobytes() for grid in a}) == 12


def test_augment_is_seeded():
  question, answer = _puzzle(9)
  questions, answers = np.stack([question] * 5), np.stack([answer] * 5)
  first = sudoku.augment_many(np.random.default_rng(7), questions, answers, 9, 3)
  again = sudoku.augment_many(np.random.default_rng(7), questions, answers, 9, 3)
  other = sudoku.augment_many(np.random.default_rng(8), questions, answers, 9, 3)
  np.testing.assert_array_equal(first[0], again[0])
  np.testing.assert_array_equal(first[1], again[1])
  assert not np.array_equal(first[1], other[1])


# ----------------------------------------------------------------------------------------------
# Generation.


@pytest.mark.parametrize("size,num", [(4, 20), (6, 10), (9, 3)])
def test_generated_puzzles_are_unique(size, num):
  puzzles = sudoku_solver.generate(num, size, np.random.default_rng(0))
  assert len(puzzles) == num and puzzles.size == size
  assert puzzles.questions.shape == (num, size * size) and puzzles.questions.dtype == np.uint8
  assert puzzles.ratings.dtype == np.float32
  for question, answer in zip(puzzles.questions, puzzles.answers):
    assert _independent_valid(answer, size)
    solutions = _independent_solutions(question, size)
    assert len(solutions) == 1
    np.testing.assert_array_equal(solutions[0], answer)


def test_generated_4x4_puzzles_are_minimal():
  puzzles = sudoku_solver.generate(5, 4, np.random.default_rng(1))
  for question in puzzles.questions:
    for cell in np.flatnonzero(question):
      fewer = question.copy()
      fewer[cell] = 0
      assert len(_independent_solutions(fewer, 4)) == 2


def test_generate_difficulty_filter():
  puzzles = sudoku_solver.generate(3, 9, np.random.default_rng(2), min_backtracks=3)
  assert (puzzles.ratings >= 3).all()
  for question, rating in zip(puzzles.questions, puzzles.ratings):
    assert sudoku_solver.solve(question, 9)[1] == rating
  with pytest.raises(RuntimeError, match="backtracks"):
    sudoku_solver.generate(1, 4, np.random.default_rng(0), min_backtracks=1, max_attempts=20)


def test_generate_is_seeded():
  first = sudoku_solver.generate(5, 6, np.random.default_rng(11))
  again = sudoku_solver.generate(5, 6, np.random.default_rng(11))
  other = sudoku_solver.generate(5, 6, np.random.default_rng(12))
  np.testing.assert_array_equal(first.questions, again.questions)
  np.testing.assert_array_equal(first.answers, again.answers)
  assert not np.array_equal(first.answers, other.answers)


def test_to_tokens():
  tokens = sudoku.to_tokens(np.array([0, 1, 5, 9], np.uint8))
  assert tokens.dtype == np.int32
  np.testing.assert_array_equal(tokens, [1, 2, 6, 10])
  assert sudoku.vocab_size(9) == 11


# ----------------------------------------------------------------------------------------------
# CSV.


def test_read_hand_written_csv(tmp_path):
  path = _write(tmp_path / "s.csv", [f"puzzles0,{PUZZLE_9},{GRID_9},3",
                                     f"puzzles1,{PUZZLE_9.replace('.', '0')},{GRID_9},2.5"])
  puzzles = sudoku.read_csv(path)
  assert puzzles.size == 9 and len(puzzles) == 2
  np.testing.assert_array_equal(puzzles.questions, [_grid(PUZZLE_9)] * 2)
  np.testing.assert_array_equal(puzzles.answers, [_grid(GRID_9)] * 2)
  np.testing.assert_array_equal(puzzles.ratings, np.array([3, 2.5], np.float32))
  assert puzzles.sources == ["puzzles0", "puzzles1"]
  assert (puzzles.questions[0] == 0).sum() == PUZZLE_9.count(".")


@pytest.mark.parametrize("size", [4, 6, 9])
def test_csv_round_trip(tmp_path, size):
  puzzles = sudoku_solver.generate(4, size, np.random.default_rng(5))
  path = tmp_path / "round.csv"
  sudoku.write_csv(path, puzzles)
  lines = path.read_text().splitlines()
  assert lines[0] == "source,question,answer,rating"
  assert len(lines[1].split(",")[1]) == size * size and "0" not in lines[1].split(",")[1]
  back = sudoku.read_csv(path)
  assert back.size == size
  np.testing.assert_array_equal(back.questions, puzzles.questions)
  np.testing.assert_array_equal(back.answers, puzzles.answers)
  np.testing.assert_array_equal(back.ratings, puzzles.ratings)


def _bad_row(text):
  return [f"good,{PUZZLE_9},{GRID_9},1", text]


def _contradicting():
  question = "4" + PUZZLE_9[1:]  # the answer has 5 in the first cell
  return f"x,{question},{GRID_9},1"


@pytest.mark.parametrize("row,message", [
    (f"x,{PUZZLE_9[:80]},{GRID_9},1", "question has 80 characters, expected 81"),
    (f"x,{PUZZLE_9},{GRID_9[:80]},1", "answer has 80 characters, expected 81"),
    (f"x,a{PUZZLE_9[1:]},{GRID_9},1", "question has the character 'a' at position 1"),
    (f"x,{PUZZLE_9},0{GRID_9[1:]},1", "answer has the character '0' at position 1"),
    (f"x,{PUZZLE_9},{GRID_9[1]}{GRID_9[0]}{GRID_9[2:]},1", "not a valid solution: column 1"),
    (_contradicting(), "answer has 5 at position 1 .* where the question gives 4"),
    (f"x,{PUZZLE_9},{GRID_9}", "expected 4 columns"),
    (f"x,{PUZZLE_9},{GRID_9},hard", "rating 'hard' is not a number"),
])
def test_malformed_rows_name_file_and_line(tmp_path, row, message):
  path = _write(tmp_path / "bad.csv", _bad_row(row))
  with pytest.raises(ValueError, match=message) as info:
    sudoku.read_csv(path)
  assert f"{path}, line 3:" in str(info.value)


def test_digit_beyond_the_grid_size(tmp_path):
  question = "5" + "." * 15
  path = _write(tmp_path / "four.csv", [f"x,{'.' * 16},{GRID_4},0", f"x,{question},{GRID_4},0"])
  with pytest.raises(ValueError, match="line 3: question has the character '5' at position 1"):
    sudoku.read_csv(path)


def test_sizes_cannot_mix(tmp_path):
  path = _write(tmp_path / "mixed.csv", [f"x,{'.' * 16},{GRID_4},0", f"x,{PUZZLE_9},{GRID_9},0"])
  with pytest.raises(ValueError, match="line 3: question has 81 characters, expected 16"):
    sudoku.read_csv(path)


def test_unsupported_length_and_header(tmp_path):
  path = _write(tmp_path / "five.csv", [f"x,{'.' * 25},{'1' * 25},0"])
  with pytest.raises(ValueError, match="line 2: question has 25 characters"):
    sudoku.read_csv(path)
  path = _write(tmp_path / "header.csv", [f"x,{PUZZLE_9},{GRID_9},0"], header="q,a")
  with pytest.raises(ValueError, match="line 1: expected the header"):
    sudoku.read_csv(path)


def test_missing_file(tmp_path):
  path = tmp_path / "nowhere.csv"
  with pytest.raises(FileNotFoundError, match="nowhere.csv"):
    sudoku.read_csv(path)
