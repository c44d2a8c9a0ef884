"""ARC data: loading and validation, augmentations, the token canvas, official-builder parity."""

import hashlib
import json
import pathlib

import numpy as np
import pytest

from trm_jax.data import arc

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "arc"
REAL_ARC = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "arc"
REAL_SUBSETS = ("training", "evaluation", "concept", "training2", "evaluation2")

# A non-symmetric 2x3 grid and its 8 dihedral transforms, worked out by hand.
GRID = np.array([[1, 2, 3],
                 [4, 5, 6]], np.uint8)
HAND_DIHEDRAL = {
    0: [[1, 2, 3], [4, 5, 6]],
    1: [[3, 6], [2, 5], [1, 4]],  # a quarter turn counter-clockwise
    2: [[6, 5, 4], [3, 2, 1]],
    3: [[4, 1], [5, 2], [6, 3]],  # three quarter turns (one clockwise)
    4: [[3, 2, 1], [6, 5, 4]],  # left-right
    5: [[4, 5, 6], [1, 2, 3]],  # up-down
    6: [[1, 4], [2, 5], [3, 6]],  # transpose
    7: [[6, 3], [5, 2], [4, 1]],  # anti-transpose
}


@pytest.fixture(scope="module")
def fixture_tasks():
  return arc.load_subsets(FIXTURES, ["training", "evaluation"])


def _real_tasks():
  if not REAL_ARC.is_dir():
    pytest.skip(f"{REAL_ARC} not present (only the developers' checkouts have ../shared)")
  return arc.load_subsets(REAL_ARC, REAL_SUBSETS)


def _all_grids(tasks_by_subset):
  for tasks in tasks_by_subset.values():
    for task in tasks.values():
      for pair in task.pairs():
        yield pair.input
        if pair.output is not None:
          yield pair.output


# -- loading ------------------------------------------------------------------------------------


def test_fixtures_load(fixture_tasks):
  assert list(fixture_tasks) == ["training", "evaluation"]
  assert len(fixture_tasks["training"]) == 4 and len(fixture_tasks["evaluation"]) == 3
  task = fixture_tasks["training"]["27a28665"]
  assert len(task.train) == 7 and len(task.test) == 3
  assert all(p.output is not None and p.output.dtype == np.uint8 for p in task.pairs())
  # The ARC-1 files list "test" before "train"; pairs() keeps that order.
  assert task.json_order == ("test", "train")
  assert task.pairs()[0] is task.test[0]
  assert max(max(g.shape) for g in _all_grids(fixture_tasks)) == 30


def test_without_solutions_test_outputs_are_unknown():
  tasks = arc.load_tasks(FIXTURES / "arc-agi_evaluation_challenges.json")
  assert all(p.output is None for t in tasks.values() for p in t.test)
  assert all(p.output is not None for t in tasks.values() for p in t.train)


def _write(tmp_path, challenges, solutions=None):
  path = tmp_path / "arc-agi_x_challenges.json"
  path.write_text(challenges if isinstance(challenges, str) else json.dumps(challenges))
  sol_path = None
  if solutions is not None:
    sol_path = tmp_path / "arc-agi_x_solutions.json"
    sol_path.write_text(json.dumps(solutions))
  return path, sol_path


def _task(train_input=((1, 2), (3, 4)), test_input=((0,),)):
  return {"train": [{"input": [list(r) for r in train_input], "output": [[5]]}],
          "test": [{"input": [list(r) for r in test_input]}]}


@pytest.mark.parametrize("grid,message", [
    ([[0] * 31] * 31, "31x31, larger than 30x30"),
    ([[0] * 31], "1x31, larger than 30x30"),
    ([[1, 10]], "value 10 at row 0, column 1 is outside 0..9"),
    ([[1, -1]], "value -1"),
    ([[1, 2], [3]], "ragged"),
    ([[1, 2.5]], "integers"),
    ([[True]], "integers"),
    ([], "list of rows"),
    ([[]], "empty grid"),
])
def test_bad_grids_name_file_task_and_pair(tmp_path, grid, message):
  path, _ = _write(tmp_path, {"ok": _task(), "bad1": _task(train_input=grid)})
  with pytest.raises(ValueError) as err:
    arc.load_tasks(path)
  text = str(err.value)
  assert str(path) in text and "'bad1'" in text and "train pair 0 input" in text
  assert message in text


def test_bad_solution_grid_names_solutions_file(tmp_path):
  path, sol_path = _write(tmp_path, {"t1": _task()}, {"t1": [[[10]]]})
  with pytest.raises(ValueError, match=r"arc-agi_x_solutions\.json: task 't1', test pair 0 output"):
    arc.load_tasks(path, sol_path)


@pytest.mark.parametrize("solutions,message", [
    ({"t1": [[[1]], [[2]]]}, "2 solution grids for 1 test inputs"),
    ({}, "no solutions for this task"),
    ({"t1": [[[1]]], "t9": [[[1]]]}, "solutions for tasks not in"),
])
def test_solutions_must_match_the_test_inputs(tmp_path, solutions, message):
  path, sol_path = _write(tmp_path, {"t1": _task()}, solutions)
  with pytest.raises(ValueError, match=message) as err:
    arc.load_tasks(path, sol_path)
  assert str(sol_path) in str(err.value)


@pytest.mark.parametrize("task,message", [
    ({"test": [{"input": [[1]]}]}, "task 't1': missing key 'train'"),
    ({"train": [], "test": [{"input": [[1]]}]}, "'train' must be a non-empty list"),
    ({"train": [{"input": [[1]]}], "test": [{"input": [[1]]}]},
     "train pair 0: missing key 'output'"),
    ({"train": [{"input": [[1]], "output": [[1]]}], "test": [{}]},
     "test pair 0: missing key 'input'"),
    ([1, 2], "a task must be an object"),
])
def test_malformed_tasks(tmp_path, task, message):
  path, _ = _write(tmp_path, {"t1": task})
  with pytest.raises(ValueError, match=message) as err:
    arc.load_tasks(path)
  assert str(path) in str(err.value)


def test_broken_json_and_missing_files(tmp_path):
  path, _ = _write(tmp_path, '{"t1": {"train": [')
  with pytest.raises(ValueError, match="malformed JSON") as err:
    arc.load_tasks(path)
  assert str(path) in str(err.value)
  missing = tmp_path / "nope_challenges.json"
  with pytest.raises(FileNotFoundError, match=str(missing)):
    arc.load_tasks(missing)
  with pytest.raises(FileNotFoundError, match="arc-agi_nosuch_challenges.json"):
    arc.load_subsets(tmp_path, ["nosuch"])


# -- augmentations ------------------------------------------------------------------------------


def test_dihedral_matches_hand_transforms():
  for t, expected in HAND_DIHEDRAL.items():
    np.testing.assert_array_equal(arc.dihedral(GRID, t), expected, err_msg=f"t={t}")
    assert arc.dihedral_shape(GRID.shape, t) == np.shape(expected)
  # The official numbering in numpy terms.
  np.testing.assert_array_equal(arc.dihedral(GRID, 1), np.rot90(GRID))
  np.testing.assert_array_equal(arc.dihedral(GRID, 3), np.rot90(GRID, 3))
  np.testing.assert_array_equal(arc.dihedral(GRID, 7), np.fliplr(np.rot90(GRID)))
  with pytest.raises(ValueError, match="outside 0..7"):
    arc.dihedral(GRID, 8)


def test_dihedral_group_properties():
  square = np.arange(9).reshape(3, 3)  # no symmetry: 8 distinct images
  images = {arc.dihedral(square, t).tobytes() for t in range(8)}
  assert len(images) == 8
  for t in range(8):
    np.testing.assert_array_equal(arc.inverse_dihedral(arc.dihedral(GRID, t), t), GRID)
    np.testing.assert_array_equal(arc.dihedral(arc.inverse_dihedral(GRID, t), t), GRID)
    # Closed under composition.
    for u in range(8):
      assert arc.dihedral(arc.dihedral(square, t), u).tobytes() in images
  # Rotations compose: t1 twice is t2, t1 three times is t3.
  np.testing.assert_array_equal(arc.dihedral(arc.dihedral(GRID, 1), 1), arc.dihedral(GRID, 2))
  np.testing.assert_array_equal(arc.dihedral(arc.dihedral(GRID, 2), 1), arc.dihedral(GRID, 3))


def test_augmentation_hand_example():
  colors = np.array([0, 9, 8, 7, 6, 5, 4, 3, 2, 1])
  aug = arc.Augmentation(1, colors)
  # Colours first (1->9, ..., 6->4), then a quarter turn.
  np.testing.assert_array_equal(aug.apply(GRID), [[7, 4], [8, 5], [9, 6]])
  np.testing.assert_array_equal(aug.invert(aug.apply(GRID)), GRID)
  assert aug.name("abc") == "abc|||t1|||0987654321"
  assert arc.Augmentation.identity().name("abc") == "abc"
  with pytest.raises(ValueError, match="permutation"):
    arc.Augmentation(0, np.zeros(10))


def _check_round_trip(grids, rng):
  # Every grid under all 8 dihedral transforms, each with a colour permutation from a pool.
  pool = [arc.Augmentation(i % 8, np.r_[0, rng.permutation(np.arange(1, 10))]) for i in range(64)]
  count = 0
  for i, grid in enumerate(grids):
    for aug in pool[8 * (i % 8):8 * (i % 8) + 8]:
      augmented = aug.apply(grid)
      assert augmented.shape == arc.dihedral_shape(grid.shape, aug.dihedral)
      np.testing.assert_array_equal(aug.invert(augmented), grid)
      count += 1
  return count


def test_augment_then_invert_is_identity_on_fixtures(fixture_tasks):
  assert _check_round_trip(_all_grids(fixture_tasks), np.random.RandomState(0)) > 0


def test_augment_then_invert_is_identity_on_real_arc():
  tasks = _real_tasks()
  assert _check_round_trip(_all_grids(tasks), np.random.RandomState(0)) > 8 * 10000


def test_augmentations_for_are_distinct_and_keep_black(fixture_tasks):
  task = fixture_tasks["training"]["d631b094"]
  augs = arc.augmentations_for(task, 50, np.random.RandomState(0))
  assert len(augs) == 51 and augs[0].is_identity
  assert all(a.colors[0] == 0 for a in augs)
  assert len({arc.task_hash(task.pairs(), a) for a in augs}) == 51
  again = arc.augmentations_for(task, 50, np.random.RandomState(0))
  assert [a.name("x") for a in again] == [a.name("x") for a in augs]


def test_augmentations_for_caps_retries_like_the_official_code():
  # One black cell: every augmentation gives the same task, so all 5 * num_aug trials fail.
  black = arc.ArcTask("k", [arc.ArcPair(np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.uint8))],
                      [arc.ArcPair(np.zeros((1, 1), np.uint8), None)])
  rng = np.random.RandomState(3)
  assert len(arc.augmentations_for(black, 4, rng)) == 1
  expected = np.random.RandomState(3)
  for _ in range(5 * 4):  # one dihedral id and one colour permutation per trial
    expected.randint(0, 8)
    expected.permutation(np.arange(1, 10, dtype=np.uint8))
  assert rng.randint(0, 1 << 30) == expected.randint(0, 1 << 30)
  # One cell of colour 1: only 9 distinct tasks exist (the colour it maps to).
  one = arc.ArcTask("k", [arc.ArcPair(np.ones((1, 1), np.uint8), np.ones((1, 1), np.uint8))],
                    [arc.ArcPair(np.ones((1, 1), np.uint8), None)])
  assert len(arc.augmentations_for(one, 1000, np.random.RandomState(0))) == 9
  assert len(arc.augmentations_for(one, 0, np.random.RandomState(0))) == 1


# -- the token canvas ---------------------------------------------------------------------------


def test_encode_hand_example():
  P, E = arc.PAD_ID, arc.EOS_ID
  canvas = arc.encode(np.array([[0, 1, 2], [3, 4, 5]]), offset=(1, 2)).reshape(30, 30)
  assert canvas.dtype == np.int32
  expected = np.full((30, 30), P)
  expected[1:5, 2:7] = [[2, 3, 4, E, P],
                        [5, 6, 7, E, P],
                        [E, E, E, P, P],  # EOS row spans the grid's columns; corner stays PAD
                        [P, P, P, P, P]]
  np.testing.assert_array_equal(canvas, expected)


def test_encode_drops_eos_outside_the_canvas():
  full = arc.encode(np.full((30, 30), 9)).reshape(30, 30)
  assert (full == 11).all()
  tall = arc.encode(np.zeros((30, 2), np.uint8), offset=(0, 28)).reshape(30, 30)
  assert (tall[:, 28:] == 2).all() and (tall[:, :28] == arc.PAD_ID).all()
  wide = arc.encode(np.zeros((2, 30), np.uint8)).reshape(30, 30)
  assert (wide[2] == arc.EOS_ID).all() and (wide[3:] == arc.PAD_ID).all()
  with pytest.raises(ValueError, match="does not fit"):
    arc.encode(np.zeros((2, 3)), offset=(28, 28))


def test_encode_decode_round_trip_with_translation(fixture_tasks):
  rng = np.random.RandomState(0)
  for grid in _all_grids(fixture_tasks):
    np.testing.assert_array_equal(arc.decode(arc.encode(grid)), grid)
    offset = arc.random_offset(rng, [grid.shape])
    tokens = arc.encode(grid, offset)
    np.testing.assert_array_equal(arc.decode(tokens, offset), grid)
    assert (arc.decode(tokens) is None) == (offset != (0, 0))


def test_random_offset_fits_every_shape():
  rng = np.random.RandomState(0)
  offsets = [arc.random_offset(rng, [(3, 28), (5, 2)]) for _ in range(500)]
  rows, cols = zip(*offsets)
  assert set(rows) == set(range(26)) and set(cols) == set(range(3))


def test_decode_crops_like_the_official_evaluator():
  canvas = np.zeros((30, 30), np.int32)
  assert arc.decode(canvas) is None  # PAD in the corner: no grid
  canvas[0, 0] = arc.EOS_ID
  assert arc.decode(canvas) is None
  # Colour runs of 5, 3, 3 then 0 per row: areas 5, 6, 9 -> a 3x3 grid.
  canvas[:] = arc.PAD_ID
  canvas[0, :5] = canvas[1, :3] = canvas[2, :4] = 2 + 7
  np.testing.assert_array_equal(arc.decode(canvas), np.full((3, 3), 7))
  # A wide first row beats narrow rows below it: areas 10, 2 -> 1x10.
  canvas[:] = arc.PAD_ID
  canvas[0, :10] = 3
  canvas[1, :1] = 3
  assert arc.decode(canvas).shape == (1, 10)
  # No EOS at all: the whole canvas is the grid.
  assert arc.decode(np.full(900, 5)).shape == (30, 30)
  # Tokens after the EOS boundary are ignored.
  tokens = arc.encode(GRID).reshape(30, 30)
  tokens[10:, 10:] = 7
  np.testing.assert_array_equal(arc.decode(tokens), GRID)


# -- examples -----------------------------------------------------------------------------------


def _digest(array):
  return hashlib.sha256(np.ascontiguousarray(array, np.uint8).tobytes()).hexdigest()


def test_build_examples_reproduces_the_official_builder(fixture_tasks):
  # Written by tests/fixtures/arc/make_official_arc_reference.py from the official builder.
  ref = np.load(FIXTURES / "official_arc_reference.npz")
  examples = arc.build_examples(fixture_tasks, "evaluation", num_aug=int(ref["num_aug"]),
                                seed=int(ref["seed"]))
  assert examples["train"].identifiers == json.loads(str(ref["identifiers"]))
  assert examples["test"].num_puzzle_identifiers == len(examples["train"].identifiers)
  for split in ("train", "test"):
    arrays = examples[split].arrays()
    for key in ("inputs", "labels"):
      assert _digest(arrays[key]) == str(ref[f"{split}/{key}_sha256"]), (split, key)
    ids = arrays["puzzle_identifier"]
    starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
    np.testing.assert_array_equal(ids[starts], ref[f"{split}/puzzle_identifiers"])
    np.testing.assert_array_equal(np.r_[starts, len(ids)], ref[f"{split}/puzzle_indices"])
    groups = arrays["group"][starts]
    group_starts = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    np.testing.assert_array_equal(np.r_[group_starts, len(groups)], ref[f"{split}/group_indices"])


def test_build_examples_structure(fixture_tasks):
  examples = arc.build_examples(fixture_tasks, "evaluation", num_aug=6, seed=1)
  train, test = examples["train"], examples["test"]
  assert train.num_groups == 7 and test.num_groups == 3
  # Training tasks train on all their pairs; the test set on its demonstrations only.
  num_pairs = sum(len(t.pairs()) for t in fixture_tasks["training"].values())
  num_pairs += sum(len(t.train) for t in fixture_tasks["evaluation"].values())
  assert len(train) == 7 * num_pairs
  assert len(test) == 7 * sum(len(t.test) for t in fixture_tasks["evaluation"].values())
  # Puzzle identifiers: one per (task, augmentation), 0 reserved, shared by the test set's splits.
  assert train.num_puzzle_identifiers == 1 + 7 * 7
  assert set(train.puzzle_identifiers) == set(range(1, 50))
  assert set(test.puzzle_identifiers) <= set(train.puzzle_identifiers)
  # Every train puzzle keeps one pair untranslated.
  inputs = train.arrays()["inputs"]
  for pid in np.unique(train.puzzle_identifiers):
    assert (inputs[train.puzzle_identifiers == pid, 0] >= arc.COLOR_OFFSET).any()
  # Test examples are untranslated and invert to the original test pairs.
  for i in range(len(test)):
    ex = test[i]
    pair = fixture_tasks["evaluation"][ex["task_id"]].test[int(ex["test_index"])]
    aug = arc.Augmentation(int(ex["dihedral"]), ex["colors"])
    np.testing.assert_array_equal(aug.invert(arc.decode(ex["inputs"])), pair.input)
    np.testing.assert_array_equal(aug.invert(arc.decode(ex["labels"])), pair.output)
    assert ex["inputs"].dtype == ex["labels"].dtype == ex["colors"].dtype == np.int32
  assert test[-1]["task_id"] == test[len(test) - 1]["task_id"]
  with pytest.raises(IndexError):
    test[len(test)]


def test_build_examples_is_deterministic_in_the_seed(fixture_tasks):
  def arrays(seed):
    return arc.build_examples(fixture_tasks, "evaluation", num_aug=8, seed=seed)["train"].arrays()

  a, b, c = arrays(5), arrays(5), arrays(6)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  assert not np.array_equal(a["inputs"], c["inputs"])


def test_build_examples_without_solutions(fixture_tasks):
  tasks = {"training": fixture_tasks["training"],
           "evaluation": arc.load_tasks(FIXTURES / "arc-agi_evaluation_challenges.json")}
  test = arc.build_examples(tasks, "evaluation", num_aug=2, seed=0)["test"]
  assert (test.arrays()["labels"] == arc.PAD_ID).all()
  unlabelled = {"training": arc.load_tasks(FIXTURES / "arc-agi_training_challenges.json"),
                "evaluation": fixture_tasks["evaluation"]}
  train = arc.build_examples(unlabelled, "evaluation", num_aug=0, seed=0)["train"]
  assert len(train) == sum(len(t.train) for s in unlabelled.values() for t in s.values())
  with pytest.raises(ValueError, match="test set 'evaluation2'"):
    arc.build_examples(tasks, "evaluation2")
