"""ARC evaluator: voting, pass@K by hand, inverting augmentations, submission, official parity."""

import json
import math
import pathlib

import numpy as np
import pytest

from trm_jax.data import arc
from trm_jax.data.arc_eval import ArcEvaluator

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "arc"


def _grid(*rows):
  return np.array(rows, np.uint8)


def _task(task_id, solutions):
  """A task whose test input i is [[i]]; only the test outputs matter to the evaluator."""
  one = _grid([0])
  return arc.ArcTask(task_id, [arc.ArcPair(one, one)],
                     [arc.ArcPair(_grid([i]), s) for i, s in enumerate(solutions)])


def _add(evaluator, rows, seed=0):
  """rows: (task id, test index, predicted grid or None, q_halt logit); random augmentations."""
  rng = np.random.RandomState(seed)
  batch = {k: [] for k in ("predictions", "q_halt", "task_ids", "test_indices", "dihedrals",
                           "colors")}
  for task_id, test_index, grid, q in rows:
    aug = arc.Augmentation(rng.randint(0, 8), np.r_[0, rng.permutation(np.arange(1, 10))])
    tokens = np.zeros(arc.SEQ_LEN, np.int32) if grid is None else arc.encode(aug.apply(grid))
    for key, value in zip(batch, (tokens, q, task_id, test_index, aug.dihedral, aug.colors)):
      batch[key].append(value)
  evaluator.add(**{k: v if k == "task_ids" else np.stack(v) for k, v in batch.items()})


S_A = _grid([1, 2], [3, 4])
T_0 = _grid([5, 5, 0])
T_1 = _grid([7], [8])
W, W1, W2, W3 = _grid([4, 3], [2, 1]), _grid([5, 0, 0]), _grid([7], [7]), _grid([8], [8])


def _hand_scenario():
  tasks = {"a": _task("a", [S_A]), "b": _task("b", [T_0, T_1]), "c": _task("c", [S_A])}
  evaluator = ArcEvaluator(tasks, pass_ks=(1, 2, 3))
  _add(evaluator, [
      # a/0: 2 votes each; the solution wins on confidence, sigmoid(2) > sigmoid(0).
      ("a", 0, W, 0.0), ("a", 0, S_A, 2.0), ("a", 0, W, 0.0), ("a", 0, S_A, 2.0),
      # b/0: W1 has 3 votes, the solution 2 (despite higher confidence): rank 2.
      ("b", 0, W1, -1.0), ("b", 0, T_0, 3.0), ("b", 0, W1, -1.0), ("b", 0, W1, -1.0),
      ("b", 0, T_0, 3.0),
      # b/1: W3 2 votes, then one vote each for W2 (sigmoid 3) and the solution (sigmoid 1).
      ("b", 1, T_1, 1.0), ("b", 1, W3, -3.0), ("b", 1, W2, 3.0), ("b", 1, W3, -3.0),
  ])  # c: no predictions at all.
  return evaluator


def test_pass_at_k_by_hand():
  evaluator = _hand_scenario()
  sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
  ranked = evaluator.candidates("a", 0)
  np.testing.assert_array_equal(ranked[0][0], S_A)
  assert ranked[0][1:] == (2, pytest.approx(sigmoid(2.0)))
  assert ranked[1][1:] == (2, pytest.approx(0.5))
  assert [v for _, v, _ in evaluator.candidates("b", 1)] == [2, 1, 1]
  np.testing.assert_array_equal(evaluator.candidates("b", 1)[1][0], W2)
  # Per task: a = (1, 1, 1); b = mean over its 2 test inputs = (0, 1/2, 1); c = 0 (no votes).
  assert evaluator.result() == pytest.approx({"pass@1": 1 / 3, "pass@2": 1.5 / 3,
                                              "pass@3": 2 / 3})


def test_submission_format():
  submission = _hand_scenario().submission()
  assert json.loads(json.dumps(submission)) == submission
  assert list(submission) == ["a", "b", "c"]
  assert [len(v) for v in submission.values()] == [1, 2, 1]
  assert submission["a"] == [{"attempt_1": S_A.tolist(), "attempt_2": W.tolist()}]
  assert submission["b"] == [{"attempt_1": W1.tolist(), "attempt_2": T_0.tolist()},
                             {"attempt_1": W3.tolist(), "attempt_2": W2.tolist()}]
  assert submission["c"] == [{"attempt_1": [[0]], "attempt_2": [[0]]}]
  for entries in submission.values():
    for entry in entries:
      assert all(isinstance(v, int) for grid in entry.values() for row in grid for v in row)


def test_ties_keep_first_seen_order_and_invalid_predictions_rank():
  tasks = {"d": _task("d", [S_A]), "e": _task("e", [T_0])}
  evaluator = ArcEvaluator(tasks, pass_ks=(1, 2))
  _add(evaluator, [("d", 0, W, 0.5), ("d", 0, S_A, 0.5),
                   ("e", 0, None, 0.0), ("e", 0, None, 0.0), ("e", 0, T_0, 5.0)])
  assert evaluator.candidates("d", 0)[0][0].tolist() == W.tolist()
  assert evaluator.candidates("e", 0)[0][:2] == (None, 2)
  # The invalid candidate takes rank 1 (as the official empty crop does) ...
  assert evaluator.result() == {"pass@1": 0.0, "pass@2": 1.0}
  # ... but is never submitted: the best valid grid fills both attempts.
  assert evaluator.submission()["e"] == [{"attempt_1": T_0.tolist(), "attempt_2": T_0.tolist()}]
  swapped = ArcEvaluator(tasks, pass_ks=(1, 2))
  _add(swapped, [("d", 0, S_A, 0.5), ("d", 0, W, 0.5)])
  assert swapped.candidates("d", 0)[0][0].tolist() == S_A.tolist()


def test_augmented_predictions_map_back_to_the_original_grid():
  tasks = arc.load_tasks(FIXTURES / "arc-agi_evaluation_challenges.json",
                         FIXTURES / "arc-agi_evaluation_solutions.json")
  evaluator = ArcEvaluator(tasks, pass_ks=(1,))
  rng = np.random.RandomState(0)
  rows = {k: [] for k in ("predictions", "q_halt", "task_ids", "test_indices", "dihedrals",
                          "colors")}
  for task_id, task in tasks.items():
    for test_index, pair in enumerate(task.test):
      for t in range(8):
        aug = arc.Augmentation(t, np.r_[0, rng.permutation(np.arange(1, 10))])
        for key, value in zip(rows, (arc.encode(aug.apply(pair.output)), 0.0, task_id,
                                     test_index, t, aug.colors)):
          rows[key].append(value)
  evaluator.add(**{k: v if k == "task_ids" else np.stack(v) for k, v in rows.items()})
  for task_id, task in tasks.items():
    for test_index, pair in enumerate(task.test):
      (grid, votes, _), = evaluator.candidates(task_id, test_index)
      np.testing.assert_array_equal(grid, pair.output)
      assert votes == 8
  assert evaluator.result() == {"pass@1": 1.0}
  # The wrong inverse gives another grid: the metadata really is used.
  wrong = ArcEvaluator(tasks, pass_ks=(1,))
  rows["dihedrals"] = [(t + 1) % 8 for t in rows["dihedrals"]]
  wrong.add(**{k: v if k == "task_ids" else np.stack(v) for k, v in rows.items()})
  assert wrong.result() == {"pass@1": 0.0}


def test_matches_the_official_evaluator():
  # Written by tests/fixtures/arc/make_official_arc_reference.py from the official code.
  ref = np.load(FIXTURES / "official_arc_reference.npz")
  tasks = arc.load_subsets(FIXTURES, ["training", "evaluation"])
  test = arc.build_examples(tasks, "evaluation", num_aug=int(ref["num_aug"]),
                            seed=int(ref["seed"]))["test"].arrays()
  evaluator = ArcEvaluator(tasks["evaluation"], pass_ks=tuple(int(k) for k in ref["pass_ks"]))
  for rows in np.array_split(np.arange(len(ref["preds"])), 3):
    evaluator.add(ref["preds"][rows], ref["q_halt"][rows], [test["task_id"][i] for i in rows],
                  test["test_index"][rows], test["dihedral"][rows], test["colors"][rows])
  result = evaluator.result()
  np.testing.assert_allclose([result[f"pass@{k}"] for k in ref["pass_ks"]], ref["pass"])
  assert result["pass@1"] < result["pass@2"] < result["pass@3"]  # the fixture discriminates
  official = json.loads(str(ref["submission"]))
  ours = evaluator.submission()
  assert set(ours) == set(official)
  differs = 0
  for task_id, entries in official.items():
    for theirs, mine in zip(entries, ours[task_id], strict=True):
      for key, grid in theirs.items():
        if grid:
          assert mine[key] == grid
        else:  # the official code submits its empty crop; we take the next valid candidate
          differs += 1
          assert mine[key] and mine[key] != mine["attempt_1"]
  assert differs == 1


def test_mask_bytes_ids_reset_and_merge():
  tasks = {"a": _task("a", [S_A]), "b": _task("b", [T_0, T_1])}
  tokens = np.stack([arc.encode(S_A), arc.encode(W), arc.encode(T_1)])
  args = dict(predictions=tokens, q_halt=np.zeros(3), task_ids=[b"a", b"a", b"b"],
              test_indices=np.array([0, 0, 1]), dihedrals=np.zeros(3, int),
              colors=np.tile(np.arange(10), (3, 1)))
  evaluator = ArcEvaluator(tasks, pass_ks=(1,))
  evaluator.add(**args, mask=np.array([False, True, True]))
  assert [v for _, v, _ in evaluator.candidates("a", 0)] == [1]
  assert evaluator.result() == {"pass@1": 0.25}
  evaluator.reset()
  assert evaluator.candidates("a", 0) == [] and evaluator.result() == {"pass@1": 0.0}
  # Two hosts' shares merge into what one evaluator sees.
  first, second, whole = (ArcEvaluator(tasks, pass_ks=(1,)) for _ in range(3))
  first.add(**args)
  second.add(**{**args, "q_halt": np.ones(3)})
  whole.add(**args)
  whole.add(**{**args, "q_halt": np.ones(3)})
  first.merge(second)
  for where in (("a", 0), ("b", 1)):
    assert [c[1:] for c in first.candidates(*where)] == [c[1:] for c in whole.candidates(*where)]


def test_bad_batches_and_unknown_solutions():
  tasks = {"a": _task("a", [S_A])}
  evaluator = ArcEvaluator(tasks)
  one = dict(predictions=arc.encode(S_A)[None], q_halt=np.zeros(1), dihedrals=np.zeros(1, int),
             colors=np.arange(10)[None])
  with pytest.raises(ValueError, match="unknown task 'zz'"):
    evaluator.add(task_ids=["zz"], test_indices=[0], **one)
  with pytest.raises(ValueError, match="task 'a' has 1 test inputs, got test index 1"):
    evaluator.add(task_ids=["a"], test_indices=[1], **one)
  with pytest.raises(ValueError, match="disagree in length"):
    evaluator.add(task_ids=["a", "a"], test_indices=[0], **one)
  unsolved = ArcEvaluator({"u": _task("u", [None])})
  unsolved.add(task_ids=["u"], test_indices=[0], **one)
  assert unsolved.submission() == {"u": [{"attempt_1": S_A.tolist(), "attempt_2": S_A.tolist()}]}
  with pytest.raises(ValueError, match="no task has known test outputs"):
    unsolved.result()
