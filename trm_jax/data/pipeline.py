"""Input pipeline: grain over a random-access source (a `tfds.data_source` split, or arrays).

Records are stored grouped: a *group* is an original puzzle, its *puzzles* are augmented
versions (each with its own puzzle id), and a puzzle holds one or more *examples* (ARC: the
demonstration pairs). Groups and puzzles are contiguous runs of records, described by
`PuzzleIndex`.

Training follows the official sampler: an epoch visits every group once in a seeded random
order, takes one random puzzle of the group and all of that puzzle's examples (shuffled). The
plan of epoch e is a pure function of (seed, e), so the stream is a grain `MapDataset` over
positions; its iterator state (the next position) checkpoints and restores to the exact next
batch. Each process reads positions `p, p + P, ...` of the global stream, so the union of the
processes' batches is the global batch and every example of an epoch is read exactly once.

A `RoutedIndex` (the RLRP language-model corpora) plans the stream differently, with the same
properties: whole global batches alternate between two sources at a configured ratio.
"""

from __future__ import annotations

import dataclasses
import fractions
import functools
from typing import Any, Mapping, Sequence

import grain
import numpy as np

from trm_jax.losses import IGNORE_LABEL_ID

# What every model batch holds; a scheme reads more fields through its `batch_keys`.
MODEL_KEYS = ("inputs", "labels", "puzzle_identifiers")


def run_length_encode(values: Sequence[int]) -> list[list[int]]:
  out: list[list[int]] = []
  for v in values:
    if out and out[-1][0] == v:
      out[-1][1] += 1
    else:
      out.append([int(v), 1])
  return out


def run_length_decode(pairs: Sequence[Sequence[int]]) -> np.ndarray:
  if not pairs:
    return np.zeros((0,), np.int64)
  values, counts = zip(*pairs)
  return np.repeat(np.asarray(values, np.int64), np.asarray(counts, np.int64))


@dataclasses.dataclass(frozen=True)
class PuzzleIndex:
  """Record layout of one split: run boundaries of puzzles and of groups."""

  puzzle_starts: np.ndarray  # [num_puzzles + 1] record offsets
  group_starts: np.ndarray  # [num_groups + 1] puzzle offsets

  @classmethod
  def from_sizes(cls, examples_per_puzzle, puzzles_per_group) -> "PuzzleIndex":
    puzzle_starts = np.concatenate([[0], np.cumsum(examples_per_puzzle)]).astype(np.int64)
    group_starts = np.concatenate([[0], np.cumsum(puzzles_per_group)]).astype(np.int64)
    if group_starts[-1] != len(puzzle_starts) - 1:
      raise ValueError(f"puzzle index: groups cover {group_starts[-1]} puzzles, "
                       f"but there are {len(puzzle_starts) - 1}")
    return cls(puzzle_starts, group_starts)

  @classmethod
  def from_metadata(cls, metadata: Mapping[str, Any], split: str) -> "PuzzleIndex":
    try:
      entry = metadata["index"][split]
    except KeyError:
      raise ValueError(f"dataset metadata has no puzzle index for split '{split}'") from None
    return cls.from_sizes(run_length_decode(entry["examples_per_puzzle"]),
                          run_length_decode(entry["puzzles_per_group"]))

  def to_metadata(self) -> dict[str, list[list[int]]]:
    return {"examples_per_puzzle": run_length_encode(np.diff(self.puzzle_starts)),
            "puzzles_per_group": run_length_encode(np.diff(self.group_starts))}

  @property
  def num_records(self) -> int:
    return int(self.puzzle_starts[-1])

  @property
  def num_groups(self) -> int:
    return len(self.group_starts) - 1

  @property
  def epoch_length(self) -> int:
    """Examples per epoch (the first puzzle of each group stands for all its puzzles)."""
    first = self.group_starts[:-1]
    return int(np.sum(self.puzzle_starts[first + 1] - self.puzzle_starts[first]))

  def plan(self, seed: int, global_batch_size: int) -> "_EpochPlan":
    del global_batch_size  # the official sampler ignores batch boundaries
    return _EpochPlan(self, seed)


@dataclasses.dataclass(frozen=True)
class RoutedIndex:
  """Two sources in one record array, the first `num_reasoning` records then `num_fluency`;
  a fraction `reasoning_ratio` of the global batches reads the first, the rest the second."""

  num_reasoning: int
  num_fluency: int
  reasoning_ratio: float

  @property
  def num_records(self) -> int:
    return self.num_reasoning + self.num_fluency

  @property
  def epoch_length(self) -> int:
    return self.num_records

  def plan(self, seed: int, global_batch_size: int) -> "_RoutedPlan":
    return _RoutedPlan(self, seed, global_batch_size)


class _RoutedPlan:
  """Batch j is reasoning iff floor((j + 1) r) > floor(j r) (r the ratio as a fraction): the
  most even interleaving, exactly r of any n consecutive batches up to rounding. Each source is
  read in its own seeded order, reshuffled every time it is used up. Pure function of the
  position, like `_EpochPlan`."""

  def __init__(self, index: RoutedIndex, seed: int, batch: int):
    self.ratio = fractions.Fraction(index.reasoning_ratio).limit_denominator(1000)
    self.sizes = (index.num_reasoning, index.num_fluency)
    self.starts = (0, index.num_reasoning)
    shares = (("reasoning", self.ratio), ("fluency", 1 - self.ratio))
    for source, (name, share) in enumerate(shares):
      if share > 0 and self.sizes[source] == 0:
        raise ValueError(f"reasoning_ratio {float(self.ratio)} needs {name} records; there "
                         "are none")
    self.seed, self.batch, self.length = seed, batch, index.epoch_length

  def reasoning_batches_before(self, j: int) -> int:
    return (j * self.ratio.numerator) // self.ratio.denominator

  def is_reasoning(self, j: int) -> bool:
    return self.reasoning_batches_before(j + 1) > self.reasoning_batches_before(j)

  @functools.lru_cache(maxsize=8)
  def order(self, source: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([self.seed, source, epoch]).permutation(self.sizes[source])

  def __call__(self, position: int) -> int:
    j, offset = divmod(int(position), self.batch)
    source = 0 if self.is_reasoning(j) else 1
    before = self.reasoning_batches_before(j)
    used = (before if source == 0 else j - before) * self.batch + offset
    epoch, k = divmod(used, self.sizes[source])
    return self.starts[source] + int(self.order(source, epoch)[k])


@dataclasses.dataclass
class Prepared:
  """What a run reads of its dataset: the sources of each split (random access) and the
  training split's layout, with the dataset's metadata (shapes, puzzle index)."""

  train: Any  # random-access source of training records
  train_index: PuzzleIndex | RoutedIndex
  test: Any
  metadata: dict[str, Any]
  # Held-out training puzzles (builder config `validation_fraction`): what periodic evaluations,
  # keep_best and every choice of a protocol read; None when the dataset has no such split.
  validation: Any = None


class ArraySource:
  """A random-access source over in-memory arrays (tests, generated data)."""

  def __init__(self, arrays: Mapping[str, np.ndarray]):
    lengths = {len(v) for v in arrays.values()}
    if len(lengths) != 1:
      raise ValueError(f"ArraySource: arrays of different lengths {lengths}")
    self._arrays = dict(arrays)
    self._len = lengths.pop()

  @property
  def arrays(self) -> dict[str, np.ndarray]:
    return self._arrays

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {k: v[index] for k, v in self._arrays.items()}


class _EpochPlan:
  """Which record each position of the training stream reads (pure function of the seed)."""

  def __init__(self, index: PuzzleIndex, seed: int):
    self.index = index
    self.seed = seed
    self.length = index.epoch_length
    sizes = np.diff(index.puzzle_starts)
    group_sizes = sizes[index.group_starts[:-1]]
    varying = [g for g in range(index.num_groups)
               if len(set(sizes[index.group_starts[g]:index.group_starts[g + 1]])) != 1]
    if varying:
      raise ValueError(f"puzzles of group {varying[0]} have different example counts "
                       f"({sorted(set(sizes[index.group_starts[varying[0]]:index.group_starts[varying[0] + 1]]))})")
    self._group_sizes = group_sizes

  @functools.lru_cache(maxsize=4)
  def epoch(self, epoch: int) -> np.ndarray:
    rng = np.random.default_rng([self.seed, epoch])
    index = self.index
    order = rng.permutation(index.num_groups)
    first, last = index.group_starts[order], index.group_starts[order + 1]
    puzzles = first + (rng.random(len(order)) * (last - first)).astype(np.int64)
    records = []
    for puzzle in puzzles:
      start, stop = index.puzzle_starts[puzzle], index.puzzle_starts[puzzle + 1]
      records.append(start + rng.permutation(stop - start))
    return np.concatenate(records)

  def __call__(self, position: int) -> int:
    epoch, offset = divmod(int(position), self.length)
    return int(self.epoch(epoch)[offset])


def to_model_batch(example: Mapping[str, np.ndarray], pad_id: int = 0,
                   keys: Sequence[str] = ()) -> dict[str, np.ndarray]:
  """Model-facing fields with int32 dtypes, label PAD the ignored id; `keys` (a scheme's
  `batch_keys`) passed through as they are."""
  labels = np.asarray(example["labels"], np.int32)
  batch = {
      "inputs": np.asarray(example["inputs"], np.int32),
      "labels": np.where(labels == pad_id, IGNORE_LABEL_ID, labels).astype(np.int32),
      "puzzle_identifiers": np.asarray(example["puzzle_identifier"], np.int32),
  }
  batch.update({k: np.asarray(example[k]) for k in keys})
  return batch


def train_dataset(source, index: PuzzleIndex | RoutedIndex, *, seed: int, global_batch_size: int,
                  num_epochs: int, process_index: int = 0, process_count: int = 1,
                  keys: Sequence[str] = ()) -> grain.IterDataset:
  """This process's share of the global training batches (drop_remainder, infinite-epoch
  plan); `keys`: fields passed through besides MODEL_KEYS (the scheme's `batch_keys`)."""
  if len(source) != index.num_records:
    raise ValueError(f"source has {len(source)} records, the puzzle index {index.num_records}")
  if global_batch_size % process_count:
    raise ValueError(f"global batch {global_batch_size} is not divisible by {process_count} processes")
  plan = index.plan(seed, global_batch_size)
  positions = grain.MapDataset.range(plan.length * num_epochs)
  local = positions[process_index::process_count]
  examples = local.map(lambda position: to_model_batch(source[plan(position)], keys=keys))
  return examples.to_iter_dataset().batch(global_batch_size // process_count,
                                          drop_remainder=True)


def stream_position(iterator, process_count: int = 1) -> dict[str, int]:
  """A `train_dataset` iterator's place as a position in the global stream (examples before
  the next batch): the same on every process and meaningful for any process count, so a run
  checkpointed on one number of hosts resumes on another. (grain's own state counts this
  process's share of the positions.)"""
  return {"next_index": int(iterator.get_state()["next_index"]) * process_count}


def seek(iterator, position: dict[str, int], process_count: int = 1) -> None:
  """Moves a `train_dataset` iterator to a `stream_position`."""
  index = int(position["next_index"])
  if index % process_count:
    raise ValueError(f"stream position {index} does not split over {process_count} processes")
  iterator.set_state({"next_index": index // process_count})


def eval_batches(source, *, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1, keys: Sequence[str] = ()):
  """Every record once, in order, padded to whole batches; `valid` marks real rows and
  `index` is each row's position in the stream (record number; padding rows continue past the
  last record), by which per-row results can be put back in order after a sharded step.

  Yields this process's rows of each global batch (row r of a global batch belongs to process
  r % process_count). `keys` are extra fields passed through (e.g. ARC inversion metadata).
  """
  local_batch = global_batch_size // process_count
  n = len(source)
  for start in range(0, n, global_batch_size):
    rows = [start + process_index + i * process_count for i in range(local_batch)]
    examples = [source[min(r, n - 1)] for r in rows]
    batch = {k: np.stack([to_model_batch(e)[k] for e in examples]) for k in MODEL_KEYS}
    for key in keys:
      batch[key] = np.stack([np.asarray(e[key]) for e in examples])
    batch["valid"] = np.asarray([r < n for r in rows])
    batch["index"] = np.asarray(rows, np.int32)
    yield batch
