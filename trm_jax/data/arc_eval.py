"""ARC evaluation: vote over augmented predictions, pass@K and the kaggle submission.

numpy only. Semantics of the official `evaluators/arc.py` (TinyRecursiveModels @ e7b6871):
every prediction is cropped at EOS (`arc.decode`), mapped back through its augmentation and
counted as one vote, with confidence sigmoid(q_halt), for its grid at its (task, test input);
candidates rank by (votes, mean confidence), ties in order of first appearance. pass@K of a
test input: its solution is among the top K candidates; a task scores the fraction of its test
inputs that pass; pass@K is the mean over tasks (tasks without predictions score 0).

Differences from the official evaluator, all deliberate:
- Votes accumulate over `add` calls until `reset`; the official one never clears them, so each
  evaluation there silently also votes with every earlier checkpoint's predictions. Use one
  evaluator (or `reset`) per evaluation; to ensemble on purpose, keep adding, or `merge`.
- Test inputs are identified by (task id, test index) from the example's metadata; the official
  code looks them up by the hash of the decoded input grid (identical test inputs of one task
  would share votes there).
- A prediction with no grid (EOS or PAD in the corner) still takes part in the ranking as one
  invalid candidate, exactly as the official empty crop does, but the submission skips it and
  takes the next valid candidates; a test input without any valid candidate is submitted as
  [[0]] (the official code writes the empty grid, or drops the entry when there is no
  prediction at all, which misaligns the task's list).
- pass@K covers test inputs with known solutions only (all of them for the public sets).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from trm_jax.data import arc

# Candidate key of predictions that decode to no grid (never equal to any grid's key).
_INVALID = b""


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x, np.float64)))


class ArcEvaluator:
  """Accumulates votes of augmented predictions; `result()` gives pass@K, `submission()` JSON."""

  def __init__(self, tasks: Mapping[str, arc.ArcTask],
               pass_ks: Sequence[int] = (1, 2, 5, 10, 100, 1000), submission_k: int = 2):
    if not tasks:
      raise ValueError("ArcEvaluator needs at least one task")
    if any(k < 1 for k in pass_ks) or submission_k < 1:
      raise ValueError(f"K values must be >= 1, got pass_ks={pass_ks}, submission_k={submission_k}")
    self.tasks = dict(tasks)
    self.pass_ks = tuple(pass_ks)
    self.submission_k = submission_k
    self.reset()

  def reset(self) -> None:
    """Forget all predictions."""
    # (task id, test index) -> {grid key: [votes, summed confidence]}, in first-seen order.
    self._votes: dict[tuple[str, int], dict[bytes, list]] = {}
    self._grids: dict[bytes, np.ndarray | None] = {_INVALID: None}

  def add(self, predictions, q_halt, task_ids, test_indices, dihedrals, colors,
          mask=None) -> None:
    """Counts a batch of test-split predictions.

    Args:
      predictions: predicted tokens, [B, 900] (or [B, 30, 30]), untranslated canvases.
      q_halt: [B] halting logits; sigmoid(q_halt) is the prediction's confidence.
      task_ids: [B] task ids (str, or UTF-8 bytes as TFDS yields them).
      test_indices, dihedrals: [B] ints; colors: [B, 10], the examples' augmentation.
      mask: optional [B] bool, False for padding rows (they are skipped).
    """
    predictions = np.asarray(predictions).reshape(-1, arc.SEQ_LEN)
    confidence = _sigmoid(q_halt).reshape(-1)
    test_indices = np.asarray(test_indices).reshape(-1)
    dihedrals = np.asarray(dihedrals).reshape(-1)
    colors = np.asarray(colors).reshape(-1, arc.NUM_COLORS)
    mask = np.ones(len(predictions), bool) if mask is None else np.asarray(mask, bool).reshape(-1)
    task_ids = list(task_ids)
    sizes = {len(x) for x in (confidence, task_ids, test_indices, dihedrals, colors, mask)}
    if sizes != {len(predictions)}:
      raise ValueError(f"batch arguments disagree in length: {sorted(sizes | {len(predictions)})}")
    inverses = {}
    for i in np.flatnonzero(mask):
      task_id = task_ids[i].decode() if isinstance(task_ids[i], bytes) else str(task_ids[i])
      test_index = int(test_indices[i])
      task = self.tasks.get(task_id)
      if task is None:
        raise ValueError(f"prediction for unknown task {task_id!r}")
      if not 0 <= test_index < len(task.test):
        raise ValueError(f"task {task_id!r} has {len(task.test)} test inputs, got test index "
                         f"{test_index}")
      grid = arc.decode(predictions[i])
      key = _INVALID
      if grid is not None:
        aug_key = (int(dihedrals[i]), colors[i].tobytes())
        if aug_key not in inverses:
          inverses[aug_key] = arc.Augmentation(int(dihedrals[i]), colors[i])
        grid = inverses[aug_key].invert(grid)
        key = arc.grid_key(grid)
        self._grids.setdefault(key, grid)
      stats = self._votes.setdefault((task_id, test_index), {}).setdefault(key, [0, 0.0])
      stats[0] += 1
      stats[1] += float(confidence[i])

  def merge(self, other: "ArcEvaluator") -> None:
    """Adds `other`'s votes after this one's (e.g. another host's share of one evaluation)."""
    for where, candidates in other._votes.items():
      mine = self._votes.setdefault(where, {})
      for key, (votes, confidence) in candidates.items():
        stats = mine.setdefault(key, [0, 0.0])
        stats[0] += votes
        stats[1] += confidence
        self._grids.setdefault(key, other._grids[key])

  def candidates(self, task_id: str, test_index: int) -> list[tuple[np.ndarray | None, int, float]]:
    """(grid or None if invalid, votes, mean confidence), best first, for one test input."""
    stats = self._votes.get((task_id, test_index), {})
    # sorted() is stable, so equal (votes, confidence) keep first-seen order, as the official.
    ranked = sorted(stats.items(), key=lambda kv: (kv[1][0], kv[1][1] / kv[1][0]), reverse=True)
    return [(self._grids[key], votes, total / votes) for key, (votes, total) in ranked]

  def result(self) -> dict[str, float]:
    """{"pass@K": mean over tasks of the fraction of its test inputs solved within the top K}."""
    scores = np.zeros(len(self.pass_ks))
    num_tasks = 0
    for task_id, task in self.tasks.items():
      labelled = [(i, p.output) for i, p in enumerate(task.test) if p.output is not None]
      if not labelled:
        continue
      num_tasks += 1
      for test_index, solution in labelled:
        ranked = [grid for grid, _, _ in self.candidates(task_id, test_index)]
        hit = next((rank for rank, grid in enumerate(ranked)
                    if grid is not None and np.array_equal(grid, solution)), None)
        if hit is not None:
          scores += (hit < np.asarray(self.pass_ks)) / len(labelled)
    if not num_tasks:
      raise ValueError("no task has known test outputs; pass@K needs solutions")
    return {f"pass@{k}": float(s / num_tasks) for k, s in zip(self.pass_ks, scores)}

  def submission(self) -> dict[str, list[dict[str, list[list[int]]]]]:
    """Kaggle format: {task id: [{"attempt_1": grid, "attempt_2": grid, ...} per test input]}.

    Attempts are the top `submission_k` valid candidates, the best repeated when fewer.
    """
    submission = {}
    for task_id, task in self.tasks.items():
      entries = []
      for test_index in range(len(task.test)):
        grids = [g for g, _, _ in self.candidates(task_id, test_index) if g is not None]
        grids = grids[:self.submission_k] or [np.zeros((1, 1), np.uint8)]
        grids += grids[:1] * (self.submission_k - len(grids))
        entries.append({f"attempt_{j + 1}": g.tolist() for j, g in enumerate(grids)})
      submission[task_id] = entries
    return submission
