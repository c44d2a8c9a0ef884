"""The solve command (trm_jax/solve.py) on tiny trained runs of each task format.

The solutions it prints are checked against `inference.eval_batch` run here on inputs encoded
here (and, for ARC, against evaluation's own vote over the run's test split), not against the
solve module's own helpers.
"""

import dataclasses
import io
import json
import math
import os
import pathlib
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

import trm_jax
from trm_jax import evaluation, inference, main, solve
from trm_jax.config import ModelSpec
from trm_jax.data import arc, arc_eval, datasets, pipeline

from tests.test_main import FIXTURE_ARC, small_smoke_config, tiny_arc_config

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _train(cfg, workdir):
  cfg.train.max_steps = 1
  cfg.train.log_every_steps = 1
  cfg.eval.max_batches = 1
  main.run(cfg, str(workdir))
  return trm_jax.load(workdir)


@pytest.fixture(scope="module")
def sudoku_run(tmp_path_factory):
  return _train(small_smoke_config(), tmp_path_factory.mktemp("sudoku"))


@pytest.fixture(scope="module")
def maze_run(tmp_path_factory):
  cfg = small_smoke_config()
  cfg.data = ml_collections.ConfigDict(dict(
      builder="maze", builder_config=dict(name="generated_7x7", side=7, dihedral_aug=False,
                                          subsample=0),
      manual_dir="", data_dir="",
      generate=dict(kind="maze", side=7, num_train=64, num_test=16, seed=0, min_difficulty=0)))
  cfg.train.keep_best_checkpoints = 0  # no validation split here: nothing to rank by
  return _train(cfg, tmp_path_factory.mktemp("maze"))


@pytest.fixture(scope="module")
def arc_run(tmp_path_factory):
  return _train(tiny_arc_config(), tmp_path_factory.mktemp("arc"))


def _solve(run, text, name="puzzles.txt", **kwargs):
  out, err = io.StringIO(), io.StringIO()
  code = solve.solve_text(run, text, name, out=out, err=err, **kwargs)
  return code, out.getvalue(), err.getvalue()


def _blocks(stdout):
  """{where: (header, grid rows, [(trace header, grid rows)])} of the printed puzzles."""
  lines = stdout.splitlines()
  assert lines[0].startswith("# run ")
  blocks = {}
  for text in "\n".join(lines[1:]).strip("\n").split("\n\n"):
    head, *rest = text.split("\n")
    where, _, header = head.partition(": halted")
    grid, trace = [], []
    for line in rest:
      if line.startswith("  step "):
        trace.append((line.strip(), []))
      elif trace:
        trace[-1][1].append(line[4:])
      else:
        grid.append(line[2:])
    blocks[where] = ("halted" + header, grid, trace)
  return blocks


def _reference(run, inputs, identifiers=None, halt=None):
  """`inference.eval_batch` with the run's strategy (halting rule `halt`) on encoded inputs."""
  spec = ModelSpec.from_config(run.model_config)
  inputs = np.asarray(inputs, np.int32)
  batch = {"inputs": inputs, "labels": np.full_like(inputs, -100),
           "puzzle_identifiers": np.zeros(len(inputs), np.int32) if identifiers is None
           else np.asarray(identifiers, np.int32)}
  out = inference.eval_batch(run.params, batch, spec=spec,
                             strategy=_strategy(run, halt),
                             step_preds=True)
  return jax.device_get(out)


def _strategy(run, halt=None):
  strategy = inference.Strategy.from_config(run.config.eval)
  return dataclasses.replace(strategy, halt=halt) if halt else strategy


def _sigmoid(x):
  return 1 / (1 + math.exp(-x))


# ---------------------------------------------------------------------------------- Sudoku --


def _sudoku_tokens(question):  # the official encoding: blank 1, digit d -> d + 1
  return [1 if c in ".0" else int(c) + 1 for c in question]


def _sudoku_grid_tokens(rows):
  chars = "".join(rows).replace(" ", "").replace("|", "").replace("-", "").replace("+", "")
  return [0 if c == "?" else 1 if c == "." else int(c) + 1 for c in chars]


def _test_questions(run, count):
  lines = (run.workdir / "raw" / "test.csv").read_text().splitlines()[1:count + 1]
  return [line.split(",")[1] for line in lines]


def test_sudoku_file_with_a_bad_line(sudoku_run):
  q = _test_questions(sudoku_run, 3)
  q[2] = q[2].replace(".", "0", 1)  # '0' is a blank too
  text = f"# three puzzles and a bad one\n{q[0]}\n\n{q[1]}\n{q[1][:-1]}x\n{q[2]}\n"
  code, out, err = _solve(sudoku_run, text)
  assert code == 1
  assert "error: puzzles.txt, line 5: the character 'x' at position 16" in err
  blocks = _blocks(out)
  assert list(blocks) == ["puzzles.txt, line 2", "puzzles.txt, line 4", "puzzles.txt, line 6"]
  reference = _reference(sudoku_run, [_sudoku_tokens(x) for x in q])
  for i, (header, grid, trace) in enumerate(blocks.values()):
    assert len(grid) == 4 + 1  # 4 rows and the rule between the 2x2 boxes' bands
    np.testing.assert_array_equal(_sudoku_grid_tokens(grid), reference["preds"][i])
    assert header.startswith(f"halted at supervision step {reference['steps'][i]} of 4, "
                             f"confidence {_sigmoid(reference['q_halt'][i]):.3f}")
    assert not trace


def test_sudoku_errors_name_each_problem_and_csv_is_read(sudoku_run):
  q = _test_questions(sudoku_run, 2)
  clash = "11" + q[0][2:]
  text = f"{q[0]}\n{q[0][:8]}\n{clash}\n{q[0].replace('.', '7', 1)}\n"
  code, out, err = _solve(sudoku_run, text)
  assert code == 1 and list(_blocks(out)) == ["puzzles.txt, line 1"]
  assert "line 2: 8 characters, expected 16 (a 4x4 grid)" in err
  assert "line 3: the givens clash: row 1 repeats the digit 1" in err
  assert "line 4: the character '7'" in err and "not a digit 1..4" in err
  # The official CSV: its question column; a good file exits 0.
  csv_text = "source,question,answer,rating\n" + "".join(f"s,{x},,0\n" for x in q)
  code, out, err = _solve(sudoku_run, csv_text)
  assert code == 0 and not err
  assert list(_blocks(out)) == ["puzzles.txt, line 2", "puzzles.txt, line 3"]


HALT_DESCRIPTIONS = {"fixed": "fixed N_sup", "q": "Q-head halting"}  # Strategy.describe()


@pytest.mark.parametrize("halt", ["fixed", "q"])
def test_sudoku_trace_has_one_entry_per_supervision_step(sudoku_run, halt):
  q = _test_questions(sudoku_run, 1)
  code, out, _ = _solve(sudoku_run, q[0] + "\n", trace=True, halt=halt)
  assert code == 0 and HALT_DESCRIPTIONS[halt] in out.splitlines()[0]
  header, grid, trace = _blocks(out)["puzzles.txt, line 1"]
  reference = _reference(sudoku_run, [_sudoku_tokens(q[0])], halt=halt)
  steps = int(reference["steps"][0])
  assert header.startswith(f"halted at supervision step {steps} of 4,")
  assert [t.split(":")[0] for t, _ in trace] == [f"step {k} of 4" for k in range(1, steps + 1)]
  previous = np.asarray(_sudoku_tokens(q[0]))
  for k, (title, rows) in enumerate(trace):
    expected = reference["step_preds"][k, 0]
    changed = int((expected != previous).sum())
    assert title.endswith(f": {changed} cell{'s' * (changed != 1)} changed")
    if changed:  # a step that changed nothing prints no grid
      np.testing.assert_array_equal(_sudoku_grid_tokens(rows), expected)
    else:
      assert rows == []
    previous = expected
  np.testing.assert_array_equal(_sudoku_grid_tokens(grid), previous)


def test_command_line_exit_status_and_stdin(sudoku_run, tmp_path):
  q = _test_questions(sudoku_run, 2)
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  command = [sys.executable, "-m", "trm_jax.solve", "--workdir", str(sudoku_run.workdir)]
  proc = subprocess.run(command, input=f"{q[0]}\nbad\n{q[1]}\n", capture_output=True, text=True,
                        timeout=300, cwd=ROOT, env=env)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "error: <stdin>, line 2: 3 characters, expected 16" in proc.stderr
  assert list(_blocks(proc.stdout)) == ["<stdin>, line 1", "<stdin>, line 3"]
  proc = subprocess.run(command[:-1] + [str(tmp_path / "missing")], capture_output=True,
                        text=True, timeout=300, cwd=ROOT, env=env)
  assert proc.returncode == 2 and "no such run directory" in proc.stderr


def test_submission_is_refused_for_sudoku(sudoku_run, tmp_path):
  with pytest.raises(ValueError, match="submission"):
    _solve(sudoku_run, "", submission=str(tmp_path / "x.json"))


# ------------------------------------------------------------------------------------ Maze --


def test_maze_csv_with_a_bad_row(maze_run):
  lines = (maze_run.workdir / "raw" / "test.csv").read_text().splitlines()
  header, rows = lines[0], lines[1:4]
  bad = rows[1].split(",")
  bad[1] = bad[1].replace("S", " ")
  text = "\n".join([header, rows[0], ",".join(bad), "only,three,columns", rows[2]]) + "\n"
  code, out, err = _solve(maze_run, text, "mazes.csv", trace=True)
  assert code == 1
  assert "error: mazes.csv, line 3: 0 'S' cells, expected one" in err
  assert "error: mazes.csv, line 4: expected 4 columns" in err
  blocks = _blocks(out)
  assert list(blocks) == ["mazes.csv, line 2", "mazes.csv, line 5"]
  charset = "# SGo"
  questions = [rows[0].split(",")[1], rows[2].split(",")[1]]
  reference = _reference(maze_run, [[charset.index(c) + 1 for c in x] for x in questions])
  for i, (_, grid, trace) in enumerate(blocks.values()):
    assert len(grid) == 7 and all(len(row) == 7 for row in grid)
    np.testing.assert_array_equal([0 if c == "?" else charset.index(c) + 1
                                   for c in "".join(grid)], reference["preds"][i])
    assert len(trace) == reference["steps"][i]


# ------------------------------------------------------------------------------------- ARC --


def _grid_rows(grid):
  return ["".join(str(v) for v in row) for row in grid]


def test_arc_challenges_file(arc_run, tmp_path):
  challenges = json.loads((FIXTURE_ARC / "arc-agi_evaluation_challenges.json").read_text())
  known = list(challenges)
  training = json.loads((FIXTURE_ARC / "arc-agi_training_challenges.json").read_text())
  unknown = next(iter(training))
  big = json.loads(json.dumps(challenges[known[0]]))
  big["test"][0]["input"] = [[1] * 31] * 31
  text = json.dumps({known[0]: challenges[known[0]], "big_task": big, unknown: training[unknown],
                     **{k: challenges[k] for k in known[1:]}})
  submission = tmp_path / "submission.json"
  code, out, err = _solve(arc_run, text, "challenges.json", submission=str(submission),
                          trace=True)
  assert code == 1
  assert ("error: challenges.json: task 'big_task', test pair 0 input: grid is 31x31, larger "
          "than 30x30") in err
  assert f"error: task {unknown!r}: not a test-set task of the run's dataset" in err
  written = json.loads(submission.read_text())
  assert list(written) == known
  for task_id in known:
    assert len(written[task_id]) == len(challenges[task_id]["test"])
    for entry in written[task_id]:
      assert set(entry) == {"attempt_1", "attempt_2"}
      for grid in entry.values():
        assert grid and all(isinstance(v, int) and 0 <= v <= 9 for row in grid for v in row)
        assert len({len(row) for row in grid}) == 1

  # Evaluation's own vote over the run's test split (the same tasks, augmentations and
  # identifiers) ranks the same attempts.
  data = datasets.builder_for(arc_run.config.data).as_data_source()["test"]
  spec = ModelSpec.from_config(arc_run.model_config)
  strategy = inference.Strategy.from_config(arc_run.config.eval)
  evaluator = arc_eval.ArcEvaluator(arc.load_tasks(FIXTURE_ARC /
                                                   "arc-agi_evaluation_challenges.json"))
  for batch in pipeline.eval_batches(data, global_batch_size=len(data), keys=evaluation.ARC_KEYS):
    valid = batch.pop("valid")
    extra = {k: batch.pop(k) for k in evaluation.ARC_KEYS}
    result = jax.device_get(inference.eval_batch(arc_run.params, batch, spec=spec,
                                                 strategy=strategy))
    evaluator.add(result["preds"], result["q_halt"], extra["task_id"], extra["test_index"],
                  extra["dihedral"], extra["colors"], mask=valid)
  assert evaluator.submission() == written

  # Printed: each test input, its attempts (grid, votes, mean confidence) as evaluation ranks
  # them, and a trace of one entry per supervision step.
  for task_id in known:
    for i in range(len(written[task_id])):
      start = out.index(f"task {task_id}, test input {i} (")
      block = out[start:out.index("\n\n", start)]
      assert "5 augmented predictions, halted at supervision step 2 of 2" in block
      valid = [c for c in evaluator.candidates(task_id, i) if c[0] is not None]
      if not valid:
        assert "  attempt 1: no prediction decodes to a grid" in block
      for k, (grid, votes, confidence) in enumerate(valid[:2], start=1):
        lines = block.split(f"  attempt {k}: ")[1].split("\n")
        assert lines[0] == f"{votes} vote{'s' * (votes != 1)}, confidence {confidence:.3f}"
        assert lines[1:1 + len(grid)] == ["    " + row for row in _grid_rows(grid)]
      if len(valid) == 1:
        assert "  attempt 2: no other candidate" in block
      assert block.count("\n    step ") == 2  # N_sup 2, fixed halting


def test_arc_single_task_named_by_its_file(arc_run):
  challenges = json.loads((FIXTURE_ARC / "arc-agi_evaluation_challenges.json").read_text())
  task_id = list(challenges)[0]
  code, out, err = _solve(arc_run, json.dumps(challenges[task_id]), f"/data/{task_id}.json")
  assert code == 0, err
  assert f"task {task_id}, test input 0 (" in out
  code, _, err = _solve(arc_run, json.dumps(challenges[task_id]), solve.STDIN)
  assert code == 1 and "needs its id (--task_id)" in err
  changed = json.loads(json.dumps(challenges[task_id]))
  changed["test"][0]["input"][0][0] = (changed["test"][0]["input"][0][0] + 1) % 10
  code, out, err = _solve(arc_run, json.dumps(changed), solve.STDIN, task_id=task_id)
  assert code == 0 and f"task {task_id}, test input 0 (" in out
  assert f"warning: task {task_id!r} test input 0 is not the one in the run's dataset" in err


def test_arc_malformed_json_names_the_line():
  tasks, errors = solve.read_arc('{"a": {"train": [],\n "test": [}', "t.json", None)
  assert tasks == {} and errors == ["t.json, line 2, column 11: malformed JSON: Expecting value"]
  tasks, errors = solve.read_arc(json.dumps({"a": {"train": [{"input": [[1]]}],
                                                   "test": [{"input": [[1]]}]},
                                             "b": {"train": [{"input": [[1]], "output": [[2]]}],
                                                   "test": [{"input": [[1, 12]]}]}}), "t.json",
                                 None)
  assert tasks == {}
  assert errors == ["t.json: task 'a', train pair 0: missing key 'output'",
                    "t.json: task 'b', test pair 0 input: value 12 at row 0, column 1 is outside "
                    "0..9"]
