r"""Solve puzzles with a trained run: read them in the task's own format, print each solution.

    python -m trm_jax.solve --workdir W [--input FILE|-] [--trace] [--submission OUT.json]
        [--checkpoint_step N] [--halt fixed|q|converged] [--batch_size B] [--task_id ID]
        [--data_dir DIR]

The run's config.json and checkpoint are read (`trm_jax.load`); the run's dataset builder
(config.data.builder) decides the input format and the grid size its sequence length allows:
  sudoku  one puzzle per line, N*N characters row by row (81 for 9x9, 36 for the 6x6 smoke run),
          digits 1..N and '.' or '0' for blanks; blank lines and lines starting with '#' are
          skipped. A file starting with the official CSV header (source,question,answer,rating)
          is read as that CSV (its question column).
  maze    the official Maze-Hard CSV (header source,question,answer,rating, the format the maze
          builder reads), one maze per row: the question is side*side characters of '# SG'
          row by row with exactly one S and one G; the answer and rating columns are not read.
  arc     a kaggle task JSON ({"train": [...], "test": [{"input": grid}, ...]}; its id is
          --task_id, else the file name without .json) or a kaggle challenges file
          ({task id: task, ...}). Each test input is solved as evaluation does: once per
          augmentation the run trained for the task (with that augmentation's puzzle
          identifier), each prediction mapped back and counted as a vote (trm_jax/data/
          arc_eval.py); the two best candidates are the attempts.
Puzzles are batched (--batch_size, default the run's eval.global_batch_size; the last batch is
padded) and run with the run's own inference strategy (config section `eval`: guidance, halting
rule, budget, rollouts; trm_jax/inference.py); --halt replaces its halting rule ('q': each
puzzle stops when the Q head says so, for schemes with a trained head).

Output (stdout), per puzzle: where it was read (line, or task and test input), the supervision
step it halted at (the strategy's halting rule: fixed budget, Q-head halting, or convergence),
its confidence, and the solution grid (Sudoku: digits with box rules, '.' a cell left blank;
maze: the question's characters with 'o' on the path; ARC: one digit per cell; '?' marks a PAD
token). With --trace, one entry per supervision step up to the halting step: the number of
cells the step changed (step 1: against the input) and, when it changed any, its prediction
(ARC: of the unaugmented input; --trace needs a strategy of one rollout).
Confidence: sigmoid of the halting head's logit at the halting step; TRM's Q head is trained to
predict that the whole answer is correct. For ARC, the mean of that over the augmented
predictions that voted for the attempt (the evaluator's ranking key, after the vote count).
Schemes with no trained halting head (DIS with halting='none') print "n/a" (ARC still ranks
ties by the untrained logit, as evaluation does).
Invalid puzzles (wrong length, a character outside the task's symbols, clashing Sudoku givens,
a malformed CSV row, malformed JSON, an ARC grid larger than 30x30, an ARC task the run has no
puzzle identifiers for) get an error line on stderr naming the line, or the task and field; the
others are solved.

ARC: the model reads no demonstrations; a task is known to the run only through the puzzle
identifiers its augmentations were given when the dataset was built, and their embeddings were
trained on the task's demonstration pairs. The built dataset's test split records, per task of
the test set (config.data.builder_config.test_set_name, e.g. ARC-AGI-1 'evaluation'), every
augmentation and its identifier, so those tasks can be solved; training-subset tasks got
identifiers too, but their records carry no task id (and they were trained on with their test
outputs), and a task the run never saw has no trained embedding at all: both are refused with
an error naming the task id. A new task needs a dataset built with it in the test set and a
run trained on it (as the official code does for a competition's test tasks).

--submission OUT.json (ARC): the kaggle submission {task id: [{"attempt_1": grid,
"attempt_2": grid}, ...]} for the tasks solved, one entry per test input (a test input with one
valid candidate repeats it; one with none gets [[0]]).

Exit status: 0 every puzzle solved; 1 at least one puzzle or task was invalid or unknown to the
run (the others were solved and printed); 2 nothing was done (bad flags, no such run, an input
file that cannot be read, or an ARC run whose dataset is not built).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import sys
from typing import Any, Iterable, Iterator, TextIO

import numpy as np
from absl import app, flags
from etils import epath

from trm_jax.puzzle_formats import (FORMATS, STDIN, Puzzle, arc_rows, maze_rows, maze_side,
                                    read_arc, read_maze, read_sudoku, sudoku_rows, sudoku_size)

FLAGS = flags.FLAGS


def _define_flags() -> None:
  # Defined only when run as the command: tests import this module next to trm_jax.main, which
  # defines --workdir as well.
  flags.DEFINE_string("workdir", None, "run directory (or a checkpoint directory)")
  flags.DEFINE_string("input", "-", "puzzle file, '-' for stdin")
  flags.DEFINE_bool("trace", False, "also print the prediction after every supervision step, "
                    "with the cells it changed")
  flags.DEFINE_string("submission", None, "ARC: write the kaggle submission JSON (pass@2 "
                      "attempts) here")
  flags.DEFINE_enum("halt", None, ["fixed", "q", "converged"], "halting rule (default: the "
                    "run's eval.halt): 'q' stops each puzzle when the Q head says so")
  flags.DEFINE_integer("checkpoint_step", None, "checkpoint step (default: the newest)")
  flags.DEFINE_integer("batch_size", 0, "puzzles per batch (0: the run's "
                       "eval.global_batch_size)")
  flags.DEFINE_string("task_id", None, "ARC: the id of a single task JSON (default: the file "
                      "name without .json)")
  flags.DEFINE_string("data_dir", None, "ARC: TFDS data_dir of the run's dataset (default: the "
                      "run's)")
  flags.DEFINE_multi_string("imports", [], "modules to import first (ones that register a "
                            "scheme of your own)")
  flags.mark_flags_as_required(["workdir"])


@functools.cache
def _evaluator(spec, strategy, trace: bool):
  """`inference.eval_batch` jitted, once per process for each (spec, strategy, trace)."""
  import jax
  from trm_jax import inference
  return jax.jit(functools.partial(inference.eval_batch, spec=spec, strategy=strategy,
                                   step_preds=trace))


class Solver:
  """A run's evaluation weights under its own inference strategy, in padded batches."""

  def __init__(self, run, *, batch_size: int = 0, trace: bool = False, halt: str | None = None):
    from trm_jax import inference
    from trm_jax import model as model_lib
    from trm_jax.config import ModelSpec

    self.run = run
    self.spec = ModelSpec.from_config(run.model_config)
    self.strategy = inference.Strategy.from_config(run.config.eval)
    if halt:
      self.strategy = dataclasses.replace(self.strategy, halt=halt)
    self.strategy.validate(self.spec)
    if trace and self.strategy.rollouts > 1:
      raise ValueError(f"--trace follows one rollout; the run's eval strategy takes "
                       f"{self.strategy.rollouts} (eval.rollouts)")
    self.trace = trace
    self.budget = self.strategy.steps(self.spec)
    self.has_head = "halting_head" in model_lib.scheme_of(self.spec).capabilities()
    self.batch_size = batch_size or run.config.eval.global_batch_size
    self._evaluate = _evaluator(self.spec, self.strategy, trace)

  def describe(self) -> str:
    from trm_jax import model as model_lib
    confidence = ("sigmoid of the Q-halt logit" if self.has_head
                  else "n/a (no trained halting head)")
    return (f"# run {self.run.workdir}, checkpoint step {self.run.step}: scheme "
            f"{model_lib.scheme_of(self.spec).name}, {self.strategy.describe()} (budget "
            f"{self.budget} supervision steps); confidence: {confidence}")

  def confidence(self, q_halt: float) -> float | None:
    return 0.5 * (1.0 + math.tanh(0.5 * q_halt)) if self.has_head else None

  def solve(self, rows: Iterable[tuple[np.ndarray, int]], count: int) -> Iterator[dict[str, Any]]:
    """Per row of `count` (input tokens [seq_len], puzzle identifier), in order: `preds`
    [seq_len], `steps` (the halting step), `q_halt` and, with trace, `step_preds` [budget,
    seq_len] (the committed prediction after each step)."""
    import jax
    from trm_jax import losses

    size = max(1, min(self.batch_size, count))
    rows = iter(rows)
    while chunk := list(itertools.islice(rows, size)):
      inputs = np.zeros((size, self.spec.seq_len), np.int32)  # padding rows: all PAD, id 0
      identifiers = np.zeros((size,), np.int32)
      for r, (tokens, identifier) in enumerate(chunk):
        inputs[r], identifiers[r] = tokens, identifier
      batch = {"inputs": inputs, "puzzle_identifiers": identifiers,
               "labels": np.full_like(inputs, losses.IGNORE_LABEL_ID)}  # unknown answers
      out = jax.device_get(self._evaluate(self.run.params, batch))
      for r in range(len(chunk)):
        row = {"preds": out["preds"][r], "steps": int(out["steps"][r]),
               "q_halt": float(out["q_halt"][r])}
        if self.trace:
          row["step_preds"] = out["step_preds"][:, r]
        yield row


def _block(lines: list[str], indent: str = "  ") -> str:
  return "\n".join(indent + line for line in lines)


def _trace_lines(row: dict[str, Any], start: np.ndarray, budget: int, render) -> list[str]:
  """Each step's prediction up to the halting step (when it changed), with the cells it
  changed."""
  lines, previous = [], start
  for k in range(row["steps"]):
    prediction = row["step_preds"][k]
    changed = int((prediction != previous).sum())
    lines.append(f"step {k + 1} of {budget}: {changed} cell{'s' * (changed != 1)} changed")
    if changed:
      lines += ["  " + line for line in render(prediction)]
    previous = prediction
  return lines


def _confidence_text(value: float | None) -> str:
  return "n/a" if value is None else f"{value:.3f}"


# --------------------------------------------------------------------------------- solving --


def solve_grids(solver: Solver, puzzles: list[Puzzle], render, out: TextIO) -> None:
  """Sudoku and mazes: one solution per puzzle."""
  for puzzle, row in zip(puzzles, solver.solve(((p.tokens, 0) for p in puzzles), len(puzzles))):
    # Sudoku and maze datasets give every puzzle identifier 0 (builders.py).
    print(f"{puzzle.where}: halted at supervision step {row['steps']} of {solver.budget}, "
          f"confidence {_confidence_text(solver.confidence(row['q_halt']))}", file=out)
    print(_block(render(row["preds"])), file=out)
    if solver.trace:
      print(_block(_trace_lines(row, puzzle.tokens, solver.budget, render)), file=out)
    print(file=out)


class ArcTestSet:
  """The ARC tasks a run can solve: its dataset's test-split tasks, each with the augmentations
  (identity first) and puzzle identifiers it was built with. Test records are grouped by task
  (a group), then augmentation (a puzzle), then test input (an example)."""

  def __init__(self, source, index):
    self._source = source
    self._index = index
    self._group_of = {}
    for group in range(index.num_groups):
      record = source[int(index.puzzle_starts[index.group_starts[group]])]
      self._group_of[_text(record["task_id"])] = group

  def __contains__(self, task_id: str) -> bool:
    return task_id in self._group_of

  def _puzzles(self, task_id: str) -> range:
    group = self._group_of[task_id]
    return range(int(self._index.group_starts[group]), int(self._index.group_starts[group + 1]))

  def augmentations(self, task_id: str) -> list[tuple[Any, int]]:
    """[(arc.Augmentation, puzzle identifier)] of the task, identity first."""
    from trm_jax.data import arc
    out = []
    for puzzle in self._puzzles(task_id):
      record = self._source[int(self._index.puzzle_starts[puzzle])]
      out.append((arc.Augmentation(int(record["dihedral"]), np.asarray(record["colors"])),
                  int(record["puzzle_identifier"])))
    return out

  def test_inputs(self, task_id: str) -> list[np.ndarray]:
    """The encoded test inputs the dataset holds for the task (its identity puzzle's)."""
    first = self._puzzles(task_id)[0]
    records = range(int(self._index.puzzle_starts[first]),
                    int(self._index.puzzle_starts[first + 1]))
    return [np.asarray(self._source[r]["inputs"], np.int32) for r in records]


def _text(value) -> str:
  return value.decode() if isinstance(value, bytes) else str(value)


def open_arc_test_set(run, data_dir: str | None) -> ArcTestSet:
  from trm_jax.data import datasets
  from trm_jax.data.pipeline import PuzzleIndex
  data_cfg = run.config.data.copy_and_resolve_references()
  if data_dir:
    data_cfg.data_dir = data_dir
  builder = datasets.builder_for(data_cfg)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"the run's dataset 'arc/{builder.builder_config.name}' is not built under "
        f"{data_cfg.data_dir}: its test split holds the puzzle identifiers of the tasks the run "
        "can solve; pass --data_dir")
  return ArcTestSet(builder.as_data_source()["test"],
                    PuzzleIndex.from_metadata(dict(builder.info.metadata), "test"))


def solve_arc(solver: Solver, tasks: dict[str, Any], test_set: ArcTestSet, out: TextIO,
              err: TextIO):
  """Every test input of every task the run knows, voted over its augmentations; returns the
  evaluator (for the submission) and error lines for the tasks it does not know."""
  from trm_jax.data import arc, arc_eval
  errors, known = [], {}
  for task_id, task in tasks.items():
    if task_id not in test_set:
      errors.append(f"task {task_id!r}: not a test-set task of the run's dataset, so the run has "
                    "no puzzle identifiers for it (only the test set's tasks can be solved; see "
                    "--help)")
      continue
    known[task_id] = task
    held = test_set.test_inputs(task_id)
    for i, pair in enumerate(task.test):
      if i >= len(held) or not np.array_equal(arc.encode(pair.input), held[i]):
        print(f"warning: task {task_id!r} test input {i} is not the one in the run's dataset; "
              "solving the given grid with the task's trained puzzle identifiers", file=err)
  if not known:
    return None, errors
  # Rows: per task, test input and augmentation (identity first), in that order.
  augmentations = {task_id: test_set.augmentations(task_id) for task_id in known}
  plan = [(task_id, i, augmentation, identifier)
          for task_id, task in known.items() for i in range(len(task.test))
          for augmentation, identifier in augmentations[task_id]]
  rows = ((arc.encode(augmentation.apply(known[task_id].test[i].input)), identifier)
          for task_id, i, augmentation, identifier in plan)
  evaluator = arc_eval.ArcEvaluator(known, pass_ks=(1, 2), submission_k=2)
  results = solver.solve(rows, len(plan))
  for (task_id, i), group in itertools.groupby(zip(plan, results), key=lambda x: x[0][:2]):
    group = list(group)
    used = [p[2] for p, _ in group]
    outs = [r for _, r in group]
    evaluator.add(np.stack([r["preds"] for r in outs]), np.asarray([r["q_halt"] for r in outs]),
                  [task_id] * len(outs), [i] * len(outs), [a.dihedral for a in used],
                  np.stack([a.colors for a in used]))
    _print_arc_input(solver, evaluator, known[task_id], i, outs, out)
  return evaluator, errors


def _print_arc_input(solver: Solver, evaluator, task, i: int, outs: list[dict], out: TextIO):
  from trm_jax.data import arc
  steps = np.asarray([r["steps"] for r in outs])
  halted = (f"supervision step {steps[0]}" if steps.min() == steps.max() else
            f"supervision steps {steps.min()}-{steps.max()} (mean {steps.mean():.1f})")
  shape = "x".join(str(s) for s in task.test[i].input.shape)
  print(f"task {task.task_id}, test input {i} ({shape}): {len(outs)} augmented predictions, "
        f"halted at {halted} of {solver.budget}", file=out)
  valid = [c for c in evaluator.candidates(task.task_id, i) if c[0] is not None]
  if not valid:
    print("  attempt 1: no prediction decodes to a grid (the submission has [[0]])", file=out)
  for k, (grid, votes, confidence) in enumerate(valid[:2], start=1):
    print(f"  attempt {k}: {votes} vote{'s' * (votes != 1)}, confidence "
          f"{_confidence_text(confidence if solver.has_head else None)}", file=out)
    print(_block(arc_rows(grid), "    "), file=out)
  if len(valid) == 1:
    print("  attempt 2: no other candidate (the submission repeats attempt 1)", file=out)
  if solver.trace:  # the identity augmentation: the task as given
    render = lambda tokens: arc_rows(arc.decode(tokens))
    print("  trace of the unaugmented prediction:", file=out)
    print(_block(_trace_lines(outs[0], arc.encode(task.test[i].input), solver.budget, render),
                 "    "), file=out)
  print(file=out)


def solve_text(run, text: str, name: str, *, trace: bool = False, submission: str | None = None,
               batch_size: int = 0, halt: str | None = None, task_id: str | None = None,
               data_dir: str | None = None, out: TextIO = sys.stdout,
               err: TextIO = sys.stderr) -> int:
  """Solves the puzzles in `text` (read from `name`) and prints them; the exit status."""
  from trm_jax.config import ModelSpec
  builder = run.config.data.builder
  if builder not in FORMATS:
    raise ValueError(f"solve reads {', '.join(FORMATS)} puzzles; this run's dataset is "
                     f"'{builder}'")
  if submission and builder != "arc":
    raise ValueError("--submission: the kaggle submission is for ARC runs")
  spec = ModelSpec.from_config(run.model_config)
  if builder == "arc":
    tasks, errors = read_arc(text, name, task_id)
    test_set = open_arc_test_set(run, data_dir) if tasks else None
  elif builder == "sudoku":
    size = sudoku_size(spec)
    puzzles, errors = read_sudoku(text, name, size)
    render = functools.partial(sudoku_rows, size=size)
  else:
    side = maze_side(spec)
    puzzles, errors = read_maze(text, name, side)
    render = functools.partial(maze_rows, side=side)

  solver = Solver(run, batch_size=batch_size, trace=trace, halt=halt)
  print(solver.describe(), file=out)
  if builder == "arc":
    evaluator = None
    if tasks:
      evaluator, unknown = solve_arc(solver, tasks, test_set, out, err)
      errors += unknown
    if submission:
      entries = evaluator.submission() if evaluator is not None else {}
      epath.Path(submission).write_text(json.dumps(entries))
      print(f"# wrote {submission}: {len(entries)} task{'s' * (len(entries) != 1)}", file=out)
  elif puzzles:
    solve_grids(solver, puzzles, render, out)
  for line in errors:
    print(f"error: {line}", file=err)
  if errors:
    print(f"{len(errors)} error{'s' * (len(errors) != 1)} above; every other puzzle was solved",
          file=err)
  return 1 if errors else 0


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}", exitcode=2)
  import importlib
  import trm_jax

  from trm_jax import console
  console.quiet_unless_verbose()  # libraries' INFO lines (Orbax) would bury the error lines
  for module in FLAGS.imports:
    importlib.import_module(module)
  try:
    run = trm_jax.load(FLAGS.workdir, FLAGS.checkpoint_step)
    if FLAGS.input == "-":
      text, name = sys.stdin.read(), STDIN
    else:
      path = epath.Path(FLAGS.input)
      text, name = path.read_text(encoding="utf-8"), str(path)
    return solve_text(run, text, name, trace=FLAGS.trace, submission=FLAGS.submission,
                      batch_size=FLAGS.batch_size, halt=FLAGS.halt, task_id=FLAGS.task_id,
                      data_dir=FLAGS.data_dir)
  except (OSError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with exit status 2 (not 1, which means invalid puzzles) for bad flags."""
  try:
    return FLAGS(argv)
  except flags.Error as error:
    print(f"FATAL Flags parsing error: {error}\nPass --help to see help on flags.",
          file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  _define_flags()
  app.run(main, argv=sys.argv, flags_parser=_parse_flags)
