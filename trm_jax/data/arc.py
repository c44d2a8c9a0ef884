"""ARC-AGI data: kaggle-format tasks, the official augmentations, 30x30 token canvases.

numpy and the standard library only, so the TFDS builder, the input pipeline and the evaluator
share one implementation without pulling in TensorFlow or jax. The semantics are those of the
official `dataset/build_arc_dataset.py` (SamsungSAILMontreal/TinyRecursiveModels @ e7b6871);
`build_examples` lists where and why this module differs from it.

Tokens: PAD 0, EOS 1, colour c -> c + 2 (vocabulary 12); a grid sits in a 30x30 canvas (900
tokens, row-major) followed by an EOS row and an EOS column.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import hashlib
import json
import os
from typing import Iterable, Mapping, Sequence

import numpy as np
from etils import epath

from trm_jax.data import splits as splits_lib

PAD_ID = 0
EOS_ID = 1
COLOR_OFFSET = 2  # colour c is token c + 2
NUM_COLORS = 10
VOCAB_SIZE = NUM_COLORS + 2
GRID_SIZE = 30
SEQ_LEN = GRID_SIZE * GRID_SIZE
NUM_DIHEDRAL = 8
# Puzzle identifier 0 is reserved (the official "<blank>"): padding rows carry it.
BLANK_PUZZLE_IDENTIFIER = 0
BLANK_PUZZLE_NAME = "<blank>"
# The official cap on augmentation draws per task: AUGMENT_RETRIES_FACTOR * num_aug.
AUGMENT_RETRIES_FACTOR = 5
PUZZLE_NAME_SEPARATOR = "|||"

PathLike = str | os.PathLike


@dataclasses.dataclass(frozen=True, eq=False)
class ArcPair:
  """An input grid and its output grid (uint8 [rows, cols]); `output` is None when unknown."""

  input: np.ndarray
  output: np.ndarray | None


@dataclasses.dataclass(frozen=True, eq=False)
class ArcTask:
  """One ARC task: demonstration pairs and test pairs."""

  task_id: str
  train: list[ArcPair]
  test: list[ArcPair]
  # Order of the "train" / "test" keys in the source JSON. The official builder concatenates a
  # training subset's pairs in that order (the ARC-1 files list "test" first), so keeping it lets
  # `build_examples` reproduce the official example order and random draws exactly.
  json_order: tuple[str, ...] = ("train", "test")

  def pairs(self) -> list[ArcPair]:
    """All pairs, in the source file's order."""
    return [p for key in self.json_order for p in (self.train if key == "train" else self.test)]


# ----------------------------------------------------------------------------------------------
# Reading kaggle-format JSON.


def _read_json(path: PathLike):
  path = epath.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"ARC file not found: {path}")
  try:
    with path.open("rb") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: malformed JSON: {e}") from None


def _parse_grid(value, where: str) -> np.ndarray:
  try:
    grid = np.array(value)
  except ValueError:
    raise ValueError(f"{where}: ragged grid (rows of different lengths)") from None
  if grid.ndim != 2:
    raise ValueError(f"{where}: a grid must be a list of rows of integers, got {value!r:.80}")
  if grid.size == 0:
    raise ValueError(f"{where}: empty grid {value!r}")
  if grid.dtype.kind not in "iu":
    raise ValueError(f"{where}: grid values must be integers 0..9, got dtype {grid.dtype}")
  if grid.shape[0] > GRID_SIZE or grid.shape[1] > GRID_SIZE:
    raise ValueError(f"{where}: grid is {grid.shape[0]}x{grid.shape[1]}, larger than "
                     f"{GRID_SIZE}x{GRID_SIZE}")
  bad = (grid < 0) | (grid >= NUM_COLORS)
  if bad.any():
    r, c = np.argwhere(bad)[0]
    raise ValueError(f"{where}: value {grid[r, c]} at row {r}, column {c} is outside 0..9")
  return grid.astype(np.uint8)


def _pair_field(pair, key: str, where: str):
  if not isinstance(pair, dict):
    raise ValueError(f"{where}: a pair must be an object with 'input' and 'output'")
  if key not in pair:
    raise ValueError(f"{where}: missing key '{key}'")
  return _parse_grid(pair[key], f"{where} {key}")


def _pair_list(raw: dict, key: str, where: str) -> list:
  if key not in raw:
    raise ValueError(f"{where}: missing key '{key}'")
  pairs = raw[key]
  if not isinstance(pairs, list) or not pairs:
    raise ValueError(f"{where}: '{key}' must be a non-empty list of pairs")
  return pairs


def task_from_json(task_id: str, raw, where: str) -> ArcTask:
  """One kaggle-format task object (`{"train": [pairs], "test": [pairs]}`), test outputs where
  its test pairs have them (else None). ValueError naming `where`, the pair and the field."""
  if not isinstance(raw, dict):
    raise ValueError(f"{where}: a task must be an object with 'train' and 'test'")
  train = [ArcPair(_pair_field(p, "input", f"{where}, train pair {i}"),
                   _pair_field(p, "output", f"{where}, train pair {i}"))
           for i, p in enumerate(_pair_list(raw, "train", where))]
  test = [ArcPair(_pair_field(p, "input", f"{where}, test pair {i}"),
                  _pair_field(p, "output", f"{where}, test pair {i}") if "output" in p else None)
          for i, p in enumerate(_pair_list(raw, "test", where))]
  return ArcTask(task_id, train, test, tuple(k for k in raw if k in ("train", "test")))


def load_tasks(challenges_path: PathLike,
               solutions_path: PathLike | None = None) -> dict[str, ArcTask]:
  """Tasks of one kaggle `*_challenges.json`, test outputs from `*_solutions.json` if given.

  Without solutions, test outputs are those in the challenges file, else None. Every problem
  raises: FileNotFoundError naming the path, ValueError naming the file, task and pair.
  """
  challenges = _read_json(challenges_path)
  if not isinstance(challenges, dict):
    raise ValueError(f"{challenges_path}: expected an object mapping task ids to tasks")
  solutions = None
  if solutions_path is not None:
    solutions = _read_json(solutions_path)
    if not isinstance(solutions, dict):
      raise ValueError(f"{solutions_path}: expected an object mapping task ids to output grids")
    unknown = sorted(set(solutions) - set(challenges))
    if unknown:
      raise ValueError(f"{solutions_path}: solutions for tasks not in {challenges_path}: "
                       f"{unknown[:5]}")

  tasks = {}
  for task_id, raw in challenges.items():
    task = task_from_json(task_id, raw, f"{challenges_path}: task {task_id!r}")
    if solutions is not None:
      sol_where = f"{solutions_path}: task {task_id!r}"
      if task_id not in solutions:
        raise ValueError(f"{sol_where}: no solutions for this task")
      grids = solutions[task_id]
      if not isinstance(grids, list):
        raise ValueError(f"{sol_where}: expected a list of output grids")
      if len(grids) != len(task.test):
        raise ValueError(f"{sol_where}: {len(grids)} solution grids for {len(task.test)} test "
                         "inputs")
      outputs = [_parse_grid(g, f"{sol_where}, test pair {i} output") for i, g in enumerate(grids)]
      task = dataclasses.replace(task, test=[ArcPair(p.input, o) for p, o in zip(task.test,
                                                                                  outputs)])
    tasks[task_id] = task
  return tasks


def load_subsets(data_dir: PathLike, subsets: Sequence[str],
                 prefix: str = "arc-agi") -> dict[str, dict[str, ArcTask]]:
  """`{subset: tasks}` from `<data_dir>/<prefix>_<subset>_{challenges,solutions}.json`.

  A missing solutions file leaves test outputs unknown (the official builder goes on too).
  """
  if len(set(subsets)) != len(subsets):
    raise ValueError(f"duplicate subset names in {list(subsets)}")
  result = {}
  for subset in subsets:
    base = epath.Path(data_dir) / f"{prefix}_{subset}"
    solutions = base.with_name(f"{base.name}_solutions.json")
    result[subset] = load_tasks(base.with_name(f"{base.name}_challenges.json"),
                                solutions if solutions.is_file() else None)
  return result


# ----------------------------------------------------------------------------------------------
# Augmentation.

# Dihedral transform t as (transpose, reverse rows, reverse columns), applied in that order. The
# numbering is the official one (dataset/common.py): identity, np.rot90 by 1, 2, 3 quarter turns
# (counter-clockwise), flip left-right, flip up-down, transpose, anti-transpose.
_DIHEDRAL_STEPS = (
    (False, False, False), (True, True, False), (False, True, True), (True, False, True),
    (False, False, True), (False, True, False), (True, False, False), (True, True, True))
DIHEDRAL_INVERSE = (0, 3, 2, 1, 4, 5, 6, 7)


def _check_dihedral(t: int) -> int:
  if not 0 <= t < NUM_DIHEDRAL:
    raise ValueError(f"dihedral transform id {t} is outside 0..{NUM_DIHEDRAL - 1}")
  return int(t)


def dihedral(grid: np.ndarray, t: int) -> np.ndarray:
  """Dihedral transform `t` (0..7, official numbering) of a 2-D grid (a view when possible)."""
  transpose, flip_rows, flip_cols = _DIHEDRAL_STEPS[_check_dihedral(t)]
  grid = grid.T if transpose else grid
  return grid[::-1 if flip_rows else 1, ::-1 if flip_cols else 1]


def inverse_dihedral(grid: np.ndarray, t: int) -> np.ndarray:
  return dihedral(grid, DIHEDRAL_INVERSE[_check_dihedral(t)])


def dihedral_shape(shape: tuple[int, int], t: int) -> tuple[int, int]:
  """Shape of `dihedral(grid, t)` for a grid of `shape`."""
  return (shape[1], shape[0]) if _DIHEDRAL_STEPS[_check_dihedral(t)][0] else tuple(shape)


def _augment(grid: np.ndarray, t: int, colors: np.ndarray) -> np.ndarray:
  # Colours first, then the dihedral transform, as the official `aug`.
  return dihedral(colors[grid], t)


@dataclasses.dataclass(frozen=True, eq=False)
class Augmentation:
  """A colour permutation followed by dihedral transform `dihedral` (0..7).

  `colors[c]` is the new colour of colour c; the builder only draws permutations that keep 0
  (black) fixed, but any permutation of 0..9 inverts correctly.
  """

  dihedral: int
  colors: np.ndarray

  def __post_init__(self):
    colors = np.asarray(self.colors)
    if colors.shape != (NUM_COLORS,) or not np.array_equal(np.sort(colors), np.arange(NUM_COLORS)):
      raise ValueError(f"colors must be a permutation of 0..9, got {colors.tolist()}")
    colors = colors.astype(np.uint8)
    colors.flags.writeable = False
    object.__setattr__(self, "dihedral", _check_dihedral(self.dihedral))
    object.__setattr__(self, "colors", colors)

  @functools.cached_property
  def _inverse_colors(self) -> np.ndarray:
    return np.argsort(self.colors).astype(np.uint8)

  @classmethod
  def identity(cls) -> "Augmentation":
    return cls(0, np.arange(NUM_COLORS))

  @property
  def is_identity(self) -> bool:
    return self.dihedral == 0 and np.array_equal(self.colors, np.arange(NUM_COLORS))

  def apply(self, grid: np.ndarray) -> np.ndarray:
    return _augment(grid, self.dihedral, self.colors)

  def invert(self, grid: np.ndarray) -> np.ndarray:
    return self._inverse_colors[inverse_dihedral(grid, self.dihedral)]

  def name(self, task_id: str) -> str:
    """The official puzzle name: `<task>|||t<dihedral>|||<colors>`, the bare id for identity."""
    if self.is_identity:
      return task_id
    digits = "".join(str(c) for c in self.colors)
    return PUZZLE_NAME_SEPARATOR.join((task_id, f"t{self.dihedral}", digits))


def grid_key(grid: np.ndarray) -> bytes:
  """Exact identity of a grid (shape and values) as bytes; equal keys mean equal grids."""
  return bytes(grid.shape) + np.ascontiguousarray(grid, dtype=np.uint8).tobytes()


def _pair_key(input_grid: np.ndarray, output_grid: np.ndarray | None) -> bytes:
  # Each grid key is self-delimiting (its shape gives its length); 0xff marks an unknown output.
  return grid_key(input_grid) + (b"\xff" if output_grid is None else grid_key(output_grid))


def task_hash(pairs: Iterable[ArcPair], augmentation: Augmentation | None = None) -> str:
  """SHA-256 of the multiset of (augmented) pairs: equal iff the tasks have the same pairs.

  As the official `puzzle_hash`, pair order does not matter, so augmentations that only permute
  a task's pairs count as duplicates.
  """
  aug = augmentation or Augmentation.identity()
  keys = sorted(_pair_key(aug.apply(p.input), None if p.output is None else aug.apply(p.output))
                for p in pairs)
  return hashlib.sha256(b"".join(keys)).hexdigest()


def augmentations_for(task: ArcTask, num_aug: int,
                      rng: np.random.RandomState) -> list[Augmentation]:
  """The identity, then up to `num_aug` random augmentations giving distinct tasks.

  Exactly the official procedure and random draws: per trial one `rng.randint(0, 8)` for the
  dihedral transform and one `rng.permutation` of colours 1..9; a trial is kept when the whole
  augmented task (train and test pairs) hashes differently from every task kept so far; at
  most `5 * num_aug` trials. `rng` is a legacy `np.random.RandomState`, the stream the official
  builder draws from (`np.random.seed`), so the same seed gives the same augmentations.
  """
  pairs = task.pairs()
  augmentations = [Augmentation.identity()]
  if num_aug <= 0:
    return augmentations
  seen = {task_hash(pairs)}
  for _ in range(AUGMENT_RETRIES_FACTOR * num_aug):
    t = int(rng.randint(0, NUM_DIHEDRAL))
    colors = np.concatenate([[0], rng.permutation(np.arange(1, NUM_COLORS, dtype=np.uint8))])
    aug = Augmentation(t, colors)
    digest = task_hash(pairs, aug)
    if digest not in seen:
      seen.add(digest)
      augmentations.append(aug)
    if len(augmentations) > num_aug:
      break
  return augmentations


# ----------------------------------------------------------------------------------------------
# The 30x30 token canvas.


def encode(grid: np.ndarray, offset: tuple[int, int] = (0, 0)) -> np.ndarray:
  """int32 [900]: the grid's tokens with its top-left corner at `offset`, then EOS, PAD elsewhere.

  As the official builder: the EOS row lies under the grid across its columns, the EOS column
  right of it across its rows (their corner stays PAD); either is left out where it would fall
  outside the canvas.
  """
  rows, cols = grid.shape
  r, c = offset
  if not (0 <= r and 0 <= c and r + rows <= GRID_SIZE and c + cols <= GRID_SIZE):
    raise ValueError(f"a {rows}x{cols} grid at offset {offset} does not fit the "
                     f"{GRID_SIZE}x{GRID_SIZE} canvas")
  canvas = np.full((GRID_SIZE, GRID_SIZE), PAD_ID, np.int32)
  canvas[r:r + rows, c:c + cols] = np.asarray(grid, np.int32) + COLOR_OFFSET
  if r + rows < GRID_SIZE:
    canvas[r + rows, c:c + cols] = EOS_ID
  if c + cols < GRID_SIZE:
    canvas[r:r + rows, c + cols] = EOS_ID
  return canvas.reshape(SEQ_LEN)


def random_offset(rng: np.random.RandomState,
                  shapes: Iterable[tuple[int, int]]) -> tuple[int, int]:
  """A uniform top-left corner at which grids of all `shapes` fit (official draws: row, column)."""
  shapes = list(shapes)
  max_rows = max(s[0] for s in shapes)
  max_cols = max(s[1] for s in shapes)
  return (int(rng.randint(0, GRID_SIZE - max_rows + 1)),
          int(rng.randint(0, GRID_SIZE - max_cols + 1)))


def decode(tokens: np.ndarray, offset: tuple[int, int] = (0, 0)) -> np.ndarray | None:
  """The grid in a 900-token canvas (uint8), or None when there is none.

  The official evaluator's crop: from `offset` (the official code always uses (0, 0)), the
  largest-area rectangle of colour tokens whose width is, row by row, the running minimum of
  the colour run that starts each row; the first (shortest) of equal areas wins. Anything
  after it (EOS, PAD or colours) is ignored, so a prediction without EOS still decodes. None
  when the corner token is not a colour.
  """
  canvas = np.asarray(tokens).reshape(GRID_SIZE, GRID_SIZE)[offset[0]:, offset[1]:]
  is_color = (canvas >= COLOR_OFFSET) & (canvas < COLOR_OFFSET + NUM_COLORS)
  # Length of the colour run from column 0 of each row, then its running minimum over rows.
  run = np.where(is_color.all(1), is_color.shape[1], np.argmin(is_color, axis=1))
  widths = np.minimum.accumulate(run)
  areas = np.arange(1, len(widths) + 1) * widths
  rows = int(np.argmax(areas)) + 1
  if areas[rows - 1] == 0:
    return None
  return (canvas[:rows, :widths[rows - 1]] - COLOR_OFFSET).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# Examples.


# Per-example recipe columns of `ArcExamples`: (trailing shape, dtype).
_FIELDS = {"pair": ((), np.int32), "aug": ((), np.int32), "offset": ((2,), np.uint8),
           "puzzle_identifier": ((), np.int32), "group": ((), np.int32),
           "task": ((), np.int32), "test_index": ((), np.int32)}


class ArcExamples(collections.abc.Sequence):
  """The examples of one split, encoded on access.

  At 1000 augmentations the ARC-1 train split has 3.6M examples (26 GB of int32 tokens), so only
  each example's recipe is kept: which pair, which augmentation, which offset. Order: group
  (original task), then puzzle (augmentation, identity first), then pair. `ex[i]` is a dict with
  `inputs`, `labels` (int32 [900]), `puzzle_identifier`, `group` (int32) and, on the test split,
  `task_id` (str), `test_index`, `dihedral` (int32) and `colors` (int32 [10]) to invert it.
  """

  def __init__(self, split: str, pairs: list[ArcPair], task_ids: list[str],
               dihedrals: np.ndarray, colors: np.ndarray, identifiers: list[str],
               fields: dict[str, np.ndarray]):
    self.split = split
    self._pairs = pairs
    self._task_ids = task_ids
    self._dihedrals = dihedrals
    self._colors = colors
    self.identifiers = identifiers
    for v in fields.values():
      v.flags.writeable = False
    self._fields = fields

  @property
  def num_puzzle_identifiers(self) -> int:
    """Size of the puzzle-embedding table, the reserved blank id included (both splits)."""
    return len(self.identifiers)

  @property
  def puzzle_identifiers(self) -> np.ndarray:
    return self._fields["puzzle_identifier"]

  @property
  def groups(self) -> np.ndarray:
    return self._fields["group"]

  @property
  def num_groups(self) -> int:
    return int(self.groups[-1]) + 1 if len(self) else 0

  def __len__(self) -> int:
    return len(self._fields["pair"])

  def __getitem__(self, index: int) -> dict:
    if not isinstance(index, (int, np.integer)):
      raise TypeError(f"ArcExamples indices are integers, not {type(index).__name__}")
    if not -len(self) <= index < len(self):
      raise IndexError(f"example {index} out of range for {len(self)} examples")
    f = {k: v[index] for k, v in self._fields.items()}
    pair = self._pairs[f["pair"]]
    t, colors = int(self._dihedrals[f["aug"]]), self._colors[f["aug"]]
    offset = tuple(int(x) for x in f["offset"])
    example = {
        "inputs": encode(_augment(pair.input, t, colors), offset),
        "labels": (np.zeros(SEQ_LEN, np.int32) if pair.output is None
                   else encode(_augment(pair.output, t, colors), offset)),
        "puzzle_identifier": np.int32(f["puzzle_identifier"]),
        "group": np.int32(f["group"]),
    }
    if self.split != "train":  # evaluated splits: what the vote needs to invert predictions
      example.update(task_id=self._task_ids[f["task"]], test_index=np.int32(f["test_index"]),
                     dihedral=np.int32(t), colors=colors.astype(np.int32))
    return example

  def arrays(self, indices: Iterable[int] | None = None) -> dict[str, np.ndarray]:
    """Examples `indices` (default: all) stacked along a leading axis; task ids as a list."""
    indices = range(len(self)) if indices is None else indices
    examples = [self[int(i)] for i in indices]
    if not examples:
      raise ValueError("no examples to stack")
    return {k: ([e[k] for e in examples] if k == "task_id" else np.stack([e[k] for e in examples]))
            for k in examples[0]}


def validation_task_ids(tasks_by_subset: Mapping[str, Mapping[str, ArcTask]], test_set_name: str,
                        fraction: float, seed: int = 0) -> list[tuple[str, str]]:
  """(subset, task id) of the training tasks (outside `test_set_name`, with solved test pairs),
  a `fraction` of them, whose test pairs form the validation split, chosen with `seed` (a
  generator of its own: the official draws of `build_examples` stay the same)."""
  candidates = [(subset, task_id) for subset, tasks in tasks_by_subset.items()
                if subset != test_set_name for task_id, task in tasks.items()
                if task.test and all(p.output is not None for p in task.test)]
  num_tasks = splits_lib.validation_count(fraction, len(candidates))
  if not num_tasks:
    return []
  picks = np.random.default_rng([seed, num_tasks]).choice(len(candidates), num_tasks,
                                                          replace=False)
  return [candidates[i] for i in sorted(picks)]


def build_examples(tasks_by_subset: Mapping[str, Mapping[str, ArcTask]], test_set_name: str,
                   num_aug: int = 1000, seed: int = 42, validation_fraction: float = 0.0,
                   validation_seed: int = 0) -> dict[str, ArcExamples]:
  """`{"train": ArcExamples, "test": ArcExamples}` as the official `build_arc_dataset.py`.

  Matches the official builder, draw for draw, with `np.random.RandomState(seed)` in place of
  its global `np.random.seed(seed)` (the official commands use seed 42), so the examples, their
  order, the augmentations, translations and puzzle identifiers are the official ones:
  - Subsets are processed in the mapping's order; each subset's tasks are shuffled (file order,
    then `rng.shuffle`), then each task draws its augmentations (`augmentations_for`).
  - Task `test_set_name`: its demonstration pairs go to train, its test pairs to test. Every
    other task: all its pairs, demonstrations AND test pairs (with their solutions), go to
    train, in the source file's key order.
  - Puzzle identifiers: one per (task, augmentation), numbered from 1 in order of first
    appearance over the train split, then the test split, keyed by the official puzzle name
    (`Augmentation.name`; 0 is the reserved blank). A test task's puzzles have the same
    identifier in both splits, so its demonstrations train the embedding the test uses. Task
    ids repeated across subsets share the identity puzzle's identifier (as the official code).
  - `group`: the task's position among the split's tasks (the official group index).
  - Translation, train split only, after all augmentations are drawn: per puzzle
    `rng.randint(0, pairs)` picks one pair that stays at offset (0, 0) (the official code keeps
    one random pair of every augmented puzzle untranslated, not the identity puzzle); every
    other pair gets `random_offset` over its augmented input and output shapes, shared by both.
    The test split is never translated.
  Deliberate differences:
  - Unknown test outputs (no solutions file): the official builder substitutes a dummy [[0]]
    grid and trains on it; here test-split labels are all PAD (ignored), and training-subset
    test pairs without outputs are left out of train (this shifts later translation draws).
  - Identifiers are always numbered train split first; the official order depends on Python's
    set ordering when the first subset processed is the test set.
  - Examples are encoded on access (`ArcExamples`) as int32; the official arrays are uint8 and
    the augmentation is parsed back from the puzzle name, here it is stored per test example.
  - Bad grids raise ValueError at load time (official: asserts), tasks need >= 1 pair per part.
  - `validation_fraction` > 0 (not in the official builder): that share of the training tasks
    (`validation_task_ids`) are treated as the test set's are, their demonstrations to train
    and their test pairs (never translated) to a `validation` split, so that validation asks
    what test asks: unseen pairs of tasks whose puzzle embeddings trained on the
    demonstrations. Their test pairs, and all their augmentations, leave train.
  """
  if test_set_name not in tasks_by_subset:
    raise ValueError(f"test set {test_set_name!r} is not among the subsets {list(tasks_by_subset)}")
  rng = np.random.RandomState(seed)
  held = set(validation_task_ids(tasks_by_subset, test_set_name, validation_fraction,
                                 validation_seed))

  # Phase 1 (official load_puzzles_arcagi): shuffle each subset, draw augmentations per task.
  groups = {"train": [], "test": []}  # split -> [(task, pair ids, test indices, aug ids)]
  if held:
    groups["validation"] = []
  pairs, task_ids, dihedrals, colors, names = [], [], [], [], []
  for subset, tasks in tasks_by_subset.items():
    order = list(tasks.items())
    rng.shuffle(order)
    for task_id, task in order:
      augs = augmentations_for(task, num_aug, rng)
      aug_ids = np.arange(len(dihedrals), len(dihedrals) + len(augs))
      dihedrals.extend(a.dihedral for a in augs)
      colors.extend(a.colors for a in augs)
      names.extend(a.name(task_id) for a in augs)
      task_index = len(task_ids)
      task_ids.append(task_id)
      if subset == test_set_name:
        parts = {"train": list(task.train), "test": list(task.test)}
      elif (subset, task_id) in held:
        parts = {"train": list(task.train), "validation": list(task.test)}
      else:
        parts = {"train": [p for p in task.pairs() if p.output is not None]}
      for split, split_pairs in parts.items():
        ids = np.arange(len(pairs), len(pairs) + len(split_pairs))
        pairs.extend(split_pairs)
        groups[split].append((task_index, ids, np.arange(len(split_pairs)), aug_ids))
  dihedrals = np.asarray(dihedrals, np.int8)
  colors = np.stack(colors)

  # Official convert_dataset: identifiers by first appearance, then translations (train only).
  identifiers = [BLANK_PUZZLE_NAME]
  identifier_of = {}
  for split in groups:
    for _, _, _, aug_ids in groups[split]:
      for a in aug_ids:
        if names[a] not in identifier_of:
          identifier_of[names[a]] = len(identifiers)
          identifiers.append(names[a])
  puzzle_identifier = np.asarray([identifier_of[n] for n in names], np.int32)
  max_shape = np.asarray([np.maximum(p.input.shape, p.output.shape if p.output is not None
                                     else p.input.shape) for p in pairs], np.int64).reshape(-1, 2)

  splits = {}
  for split, split_groups in groups.items():
    columns = {k: [np.zeros((0,) + shape, dtype)] for k, (shape, dtype) in _FIELDS.items()}
    for group, (task_index, pair_ids, test_indices, aug_ids) in enumerate(split_groups):
      n, num_puzzles = len(pair_ids), len(aug_ids)
      offsets = np.zeros((num_puzzles, n, 2), np.uint8)
      if split == "train":
        for puzzle, a in enumerate(aug_ids):
          moved = np.arange(n) != rng.randint(0, n)
          limits = max_shape[pair_ids[moved]]
          if _DIHEDRAL_STEPS[dihedrals[a]][0]:
            limits = limits[:, ::-1]
          # One vectorised call draws what the official per-pair calls draw (row, column, ...).
          offsets[puzzle, moved] = rng.randint(0, GRID_SIZE - limits + 1)
      columns["pair"].append(np.tile(pair_ids, num_puzzles))
      columns["aug"].append(np.repeat(aug_ids, n))
      columns["offset"].append(offsets.reshape(-1, 2))
      columns["puzzle_identifier"].append(np.repeat(puzzle_identifier[aug_ids], n))
      columns["group"].append(np.full(n * num_puzzles, group))
      columns["task"].append(np.full(n * num_puzzles, task_index))
      columns["test_index"].append(np.tile(test_indices, num_puzzles))
    fields = {k: np.concatenate(v).astype(_FIELDS[k][1]) for k, v in columns.items()}
    splits[split] = ArcExamples(split, pairs, task_ids, dihedrals, colors, identifiers, fields)
  return splits
