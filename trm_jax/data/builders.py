"""TFDS builders (array_record, no TensorFlow) for every puzzle dataset.

Each builder reads files (`manual_dir`, local or gs://: the official CSVs, the kaggle ARC JSON) or
generates its data (N-Queens), and writes records in generation order (shuffling disabled) so
that groups and puzzles are contiguous runs; the run lengths go into the dataset metadata as a
`PuzzleIndex` (see pipeline.py), with `seq_len`, `vocab_size` and `num_puzzle_identifiers`.

TFDS writes into an `incomplete.*` directory and renames it only when every split is complete,
so a failed build (a malformed row, a missing file) leaves no dataset behind. All inputs are
read and validated before anything is written.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from tensorflow_datasets.core import shuffle as tfds_shuffle

from trm_jax.data import arc, maze, nqueens, sudoku
from trm_jax.data import splits as splits_lib
from trm_jax.data.pipeline import ArraySource, PuzzleIndex

# TFDS spills its write buffer to disk through tf.io.gfile past 1 GB, which needs TensorFlow.
# Records are written in order (no shuffling), so the buffer only has to hold one split; keep
# it in memory (zlib keeps ARC-1 with 1000 augmentations near 1 GB).
tfds_shuffle.MAX_MEM_BUFFER_SIZE = max(tfds_shuffle.MAX_MEM_BUFFER_SIZE, 64 << 30)


@dataclasses.dataclass
class SplitData:
  """Records of one split in order (a sequence of feature dicts), their layout, id range."""

  records: Any
  index: PuzzleIndex
  num_puzzle_identifiers: int


@dataclasses.dataclass(eq=False)
class PuzzleConfig(tfds.core.BuilderConfig):
  """Fields every puzzle builder's config has (besides its own)."""

  # The fraction of training groups (a puzzle with its augmentations; ARC: a task with solved
  # test pairs) held out as the `validation` split (at least one), chosen with
  # `validation_seed`; 0: no validation split (the official datasets have none). See
  # `splits.carve_validation` (ARC: `arc.build_examples`).
  validation_fraction: float = 0.0
  validation_seed: int = 0


def _one_example_per_puzzle(inputs, labels, puzzles_per_group: int, puzzle_ids=None) -> SplitData:
  n = len(inputs)
  if n % puzzles_per_group:
    raise ValueError(f"{n} puzzles do not split into groups of {puzzles_per_group}")
  arrays = {
      "inputs": np.asarray(inputs, np.uint8),
      "labels": np.asarray(labels, np.uint8),
      "puzzle_identifier": (np.zeros(n, np.int32) if puzzle_ids is None
                            else np.asarray(puzzle_ids, np.int32)),
      "group": np.repeat(np.arange(n // puzzles_per_group, dtype=np.int32), puzzles_per_group),
  }
  index = PuzzleIndex.from_sizes(np.ones(n, np.int64),
                                 np.full(n // puzzles_per_group, puzzles_per_group))
  return SplitData(ArraySource(arrays), index, int(arrays["puzzle_identifier"].max(initial=0)) + 1)


def _manual_file(manual_dir, name: str) -> epath.Path:
  if manual_dir is None:
    raise FileNotFoundError(f"this dataset is built from files: pass manual_dir with {name}")
  path = epath.Path(manual_dir) / name
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found (manual_dir must contain {name})")
  return path


class _PuzzleBuilder(tfds.core.GeneratorBasedBuilder):
  """Shared machinery: features, metadata, ordered writing."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}

  def _seq_len(self) -> int:
    raise NotImplementedError

  def _vocab_size(self) -> int:
    raise NotImplementedError

  def _extra_features(self) -> dict[str, Any]:
    return {}

  def _build_splits(self, manual_dir) -> dict[str, SplitData]:
    raise NotImplementedError

  def required_files(self) -> list[str]:
    """Files manual_dir must hold (checked before TFDS starts, so the error names them)."""
    return []

  def _info(self) -> tfds.core.DatasetInfo:
    L = self._seq_len()
    # Long, mostly-PAD canvases (ARC, mazes) shrink ~10x with zlib.
    encoding = tfds.features.Encoding.ZLIB if L >= 256 else tfds.features.Encoding.NONE
    features = {
        "inputs": tfds.features.Tensor(shape=(L,), dtype=np.uint8, encoding=encoding),
        "labels": tfds.features.Tensor(shape=(L,), dtype=np.uint8, encoding=encoding),
        "puzzle_identifier": tfds.features.Scalar(dtype=np.int32),
        "group": tfds.features.Scalar(dtype=np.int32),
        **self._extra_features(),
    }
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features),
                                 disable_shuffling=True, metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    # TFDS refuses to read manual_dir for a builder with no manual-download instructions.
    splits = self._build_splits(dl_manager.manual_dir if self.required_files() else None)
    cfg = self.builder_config
    if cfg.validation_fraction and "validation" not in splits:
      train = splits["train"]
      count = splits_lib.validation_count(cfg.validation_fraction, train.index.num_groups)
      (kept, kept_index), (held, held_index) = splits_lib.carve_validation(
          train.records.arrays, train.index, count, cfg.validation_seed)
      splits["train"] = SplitData(ArraySource(kept), kept_index, train.num_puzzle_identifiers)
      splits["validation"] = SplitData(ArraySource(held), held_index,
                                       train.num_puzzle_identifiers)
    self.info.metadata.update({
        "seq_len": self._seq_len(),
        "vocab_size": self._vocab_size(),
        "num_puzzle_identifiers": max(d.num_puzzle_identifiers for d in splits.values()),
        "index": {name: data.index.to_metadata() for name, data in splits.items()},
    })
    return {name: self._generate_examples(data) for name, data in splits.items()}

  def _generate_examples(self, data: SplitData) -> Iterator[tuple[int, dict[str, Any]]]:
    for i in range(data.index.num_records):
      yield i, data.records[i]


# ----------------------------------------------------------------------------------------------
# Sudoku (Sudoku-Extreme and the small 4x4 / 6x6 variants: same CSV format).


@dataclasses.dataclass(eq=False)
class SudokuConfig(PuzzleConfig):
  size: int = 9
  subsample: int = 1000  # training puzzles kept (0 = all); seeded, unlike the official one
  num_aug: int = 1000  # augmented versions per training puzzle, besides the original
  test_subsample: int = 0  # 0 = the full test CSV
  seed: int = 0


class Sudoku(_PuzzleBuilder):
  """Sudoku from `train.csv` / `test.csv` (`source,question,answer,rating`) in manual_dir.

  As the official build_sudoku_dataset.py: every training puzzle is a group of 1 + num_aug
  puzzles (original first), all with puzzle id 0; test puzzles are not augmented.
  """

  BUILDER_CONFIGS = [SudokuConfig(name="extreme_1k_aug_1000")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Place the official train.csv and test.csv in manual_dir."

  def _seq_len(self):
    return self.builder_config.size ** 2

  def required_files(self):
    return ["train.csv", "test.csv"]

  def _vocab_size(self):
    return sudoku.vocab_size(self.builder_config.size)

  def _read(self, manual_dir, split: str, keep: int, seed_offset: int) -> sudoku.SudokuSet:
    cfg = self.builder_config
    path = _manual_file(manual_dir, f"{split}.csv")
    data = sudoku.read_csv(path)
    if data.size != cfg.size:
      raise ValueError(f"{path}: {data.size}x{data.size} puzzles, but the builder config "
                       f"'{cfg.name}' has size={cfg.size}")
    if keep and keep < len(data):
      rows = np.sort(np.random.default_rng([cfg.seed, seed_offset]).choice(len(data), keep,
                                                                           replace=False))
      data = sudoku.SudokuSet(data.questions[rows], data.answers[rows], data.ratings[rows],
                              data.size)
    return data

  def _build_splits(self, manual_dir):
    cfg = self.builder_config
    train = self._read(manual_dir, "train", cfg.subsample, 0)
    test = self._read(manual_dir, "test", cfg.test_subsample, 1)
    rng = np.random.default_rng([cfg.seed, 2])
    q_aug, a_aug = sudoku.augment_many(rng, train.questions, train.answers, cfg.size, cfg.num_aug)
    L = cfg.size ** 2
    q_all = np.concatenate([train.questions[:, None], q_aug.reshape(len(train), cfg.num_aug, L)], 1)
    a_all = np.concatenate([train.answers[:, None], a_aug.reshape(len(train), cfg.num_aug, L)], 1)
    return {
        "train": _one_example_per_puzzle(sudoku.to_tokens(q_all.reshape(-1, L)),
                                         sudoku.to_tokens(a_all.reshape(-1, L)), cfg.num_aug + 1),
        "test": _one_example_per_puzzle(sudoku.to_tokens(test.questions),
                                        sudoku.to_tokens(test.answers), 1),
    }


# ----------------------------------------------------------------------------------------------
# Maze-Hard.


@dataclasses.dataclass(eq=False)
class MazeConfig(PuzzleConfig):
  side: int = 30
  dihedral_aug: bool = False  # official default off; the paper trains with it on
  subsample: int = 0


class Maze(_PuzzleBuilder):
  """Maze-Hard from `train.csv` / `test.csv` in manual_dir (30x30 grids of `# SGo`)."""

  BUILDER_CONFIGS = [MazeConfig(name="hard_30x30"), MazeConfig(name="hard_30x30_aug8",
                                                               dihedral_aug=True)]
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Place the official Maze-Hard train.csv and test.csv in manual_dir."

  def _seq_len(self):
    return self.builder_config.side ** 2

  def required_files(self):
    return ["train.csv", "test.csv"]

  def _vocab_size(self):
    return maze.VOCAB_SIZE

  def _split(self, manual_dir, split: str, augment: bool) -> SplitData:
    cfg = self.builder_config
    path = _manual_file(manual_dir, f"{split}.csv")
    data = maze.read_csv(path)
    if data.side != cfg.side:
      raise ValueError(f"{path}: {data.side}x{data.side} mazes, but the builder config "
                       f"'{cfg.name}' has side={cfg.side}")
    q, a = data.questions, data.answers
    if cfg.subsample and split == "train":
      q, a = q[:cfg.subsample], a[:cfg.subsample]
    versions = range(8) if augment else range(1)
    grid = lambda x: x.reshape(-1, cfg.side, cfg.side)
    q_all = np.stack([np.stack([maze.dihedral(g, t) for g in grid(q)]) for t in versions], 1)
    a_all = np.stack([np.stack([maze.dihedral(g, t) for g in grid(a)]) for t in versions], 1)
    L = cfg.side ** 2
    return _one_example_per_puzzle(maze.to_tokens(q_all.reshape(-1, L)),
                                   maze.to_tokens(a_all.reshape(-1, L)), len(versions))

  def _build_splits(self, manual_dir):
    return {"train": self._split(manual_dir, "train", self.builder_config.dihedral_aug),
            "test": self._split(manual_dir, "test", False)}


# ----------------------------------------------------------------------------------------------
# N-Queens (the DIS paper's task), generated with the official seeds.


@dataclasses.dataclass(eq=False)
class NQueensConfig(PuzzleConfig):
  n: int = nqueens.OFFICIAL_BOARD_SIZE
  num_train: int = nqueens.OFFICIAL_NUM_TRAIN
  num_test: int = nqueens.OFFICIAL_NUM_TEST
  train_seed: int = nqueens.OFFICIAL_TRAIN_SEED
  test_seed: int = nqueens.OFFICIAL_TEST_SEED


class NQueens(_PuzzleBuilder):
  """N-Queens completion; train = each puzzle followed by its 8 dihedral versions (a group)."""

  BUILDER_CONFIGS = [NQueensConfig(name="8x8")]

  def _seq_len(self):
    return self.builder_config.n ** 2

  def _vocab_size(self):
    return nqueens.VOCAB_SIZE

  def _build_splits(self, manual_dir):
    cfg = self.builder_config
    train_x, train_y = nqueens.generate(cfg.num_train, cfg.n, np.random.default_rng(cfg.train_seed))
    train_x, train_y = nqueens.augment(train_x, train_y, cfg.n, nqueens.OFFICIAL_NUM_AUG)
    test_x, test_y = nqueens.generate(cfg.num_test, cfg.n, np.random.default_rng(cfg.test_seed))
    return {"train": _one_example_per_puzzle(train_x, train_y, nqueens.OFFICIAL_NUM_AUG + 1),
            "test": _one_example_per_puzzle(test_x, test_y, 1)}


# ----------------------------------------------------------------------------------------------
# ARC-AGI (kaggle-format JSON).


@dataclasses.dataclass(eq=False)
class ArcConfig(PuzzleConfig):
  subsets: tuple[str, ...] = ("training", "evaluation", "concept")
  test_set_name: str = "evaluation"
  num_aug: int = 1000
  seed: int = 42  # the official commands' seed
  prefix: str = "arc-agi"


class Arc(_PuzzleBuilder):
  """ARC-AGI-1 / -2 from `<prefix>_<subset>_{challenges,solutions}.json` in manual_dir.

  Examples as the official build_arc_dataset.py (see `arc.build_examples`): groups are tasks,
  puzzles are (task, augmentation) with their own puzzle id, examples are the pairs. Test
  records carry `task_id`, `test_index`, `dihedral`, `colors` to invert predictions.
  """

  BUILDER_CONFIGS = [
      ArcConfig(name="arc1_aug_1000"),
      ArcConfig(name="arc2_aug_1000", subsets=("training2", "evaluation2", "concept"),
                test_set_name="evaluation2"),
  ]
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Place the kaggle-format ARC JSON files in manual_dir."

  def _seq_len(self):
    return arc.SEQ_LEN

  def required_files(self):
    cfg = self.builder_config
    return [f"{cfg.prefix}_{subset}_challenges.json" for subset in cfg.subsets]

  def _vocab_size(self):
    return arc.VOCAB_SIZE

  def _extra_features(self):
    return {
        "task_id": tfds.features.Text(),
        "test_index": tfds.features.Scalar(dtype=np.int32),
        "dihedral": tfds.features.Scalar(dtype=np.int32),
        "colors": tfds.features.Tensor(shape=(10,), dtype=np.int32),
    }

  def _build_splits(self, manual_dir):
    cfg = self.builder_config
    if manual_dir is None:
      raise FileNotFoundError("ARC is built from files: pass manual_dir with the kaggle JSON")
    tasks = arc.load_subsets(manual_dir, cfg.subsets, cfg.prefix)
    examples = arc.build_examples(tasks, cfg.test_set_name, cfg.num_aug, cfg.seed,
                                  cfg.validation_fraction, cfg.validation_seed)
    return {split: SplitData(_ArcRecords(ex), _arc_index(ex), ex.num_puzzle_identifiers)
            for split, ex in examples.items()}


class _ArcRecords:
  """Encodes ARC examples on access, with the inversion fields every record needs."""

  _DEFAULTS = {"task_id": "", "test_index": np.int32(-1), "dihedral": np.int32(0),
               "colors": np.arange(10, dtype=np.int32)}

  def __init__(self, examples):
    self._examples = examples

  def __len__(self):
    return len(self._examples)

  def __getitem__(self, i):
    example = {**self._DEFAULTS, **self._examples[i]}
    example["inputs"] = example["inputs"].astype(np.uint8)
    example["labels"] = example["labels"].astype(np.uint8)
    return example


def _arc_index(examples) -> PuzzleIndex:
  """Puzzles are runs of equal (group, puzzle id); groups are runs of equal group."""
  groups = np.asarray(examples.groups)
  ids = np.asarray(examples.puzzle_identifiers)
  if len(groups) == 0:
    return PuzzleIndex.from_sizes([], [])
  new_puzzle = np.concatenate([[True], (groups[1:] != groups[:-1]) | (ids[1:] != ids[:-1])])
  puzzle_starts = np.flatnonzero(new_puzzle)
  examples_per_puzzle = np.diff(np.append(puzzle_starts, len(groups)))
  puzzle_groups = groups[puzzle_starts]
  group_starts = np.flatnonzero(np.concatenate([[True], puzzle_groups[1:] != puzzle_groups[:-1]]))
  puzzles_per_group = np.diff(np.append(group_starts, len(puzzle_groups)))
  return PuzzleIndex.from_sizes(examples_per_puzzle, puzzles_per_group)
