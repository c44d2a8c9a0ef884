import numpy as np
import pytest

from trm_jax.data import pipeline
from trm_jax.losses import IGNORE_LABEL_ID


def _toy(groups=5, puzzles=3, examples=2, length=4):
  """Records numbered in order; group g has `puzzles` puzzles of `examples` records each."""
  n = groups * puzzles * examples
  arrays = {
      "inputs": np.arange(n * length, dtype=np.uint8).reshape(n, length) % 200 + 1,
      "labels": np.tile(np.array([0, 1, 2, 3], np.uint8), (n, 1)),
      "puzzle_identifier": np.repeat(np.arange(groups * puzzles), examples).astype(np.int32),
      "record": np.arange(n),
  }
  index = pipeline.PuzzleIndex.from_sizes(np.full(groups * puzzles, examples),
                                          np.full(groups, puzzles))
  return pipeline.ArraySource(arrays), index


def _record_ids(batch):
  # The first input token identifies the record (see _toy).
  return [int(x) for x in batch["inputs"][:, 0]]


def test_run_length_round_trip():
  values = [1, 1, 1, 4, 4, 2]
  assert pipeline.run_length_encode(values) == [[1, 3], [4, 2], [2, 1]]
  np.testing.assert_array_equal(pipeline.run_length_decode([[1, 3], [4, 2], [2, 1]]), values)


def test_epoch_takes_one_puzzle_per_group_with_all_its_examples():
  source, index = _toy()
  assert index.epoch_length == 5 * 2
  ds = pipeline.train_dataset(source, index, seed=0, global_batch_size=10, num_epochs=1)
  (batch,) = list(ds)
  puzzles = batch["puzzle_identifiers"]
  groups = puzzles // 3
  assert sorted(groups.tolist()) == sorted(list(range(5)) * 2)
  for g in range(5):  # both examples of the group come from one puzzle
    assert len(set(puzzles[groups == g].tolist())) == 1
  # Label PAD becomes the ignored id; other tokens are kept.
  np.testing.assert_array_equal(batch["labels"][0], [IGNORE_LABEL_ID, 1, 2, 3])


def test_same_seed_same_stream_and_different_seed_different():
  source, index = _toy()
  take = lambda seed: [_record_ids(b) for b in pipeline.train_dataset(
      source, index, seed=seed, global_batch_size=4, num_epochs=3)]
  assert take(1) == take(1)
  assert take(1) != take(2)


def test_restored_iterator_yields_the_same_next_batches():
  source, index = _toy()
  ds = pipeline.train_dataset(source, index, seed=3, global_batch_size=4, num_epochs=4)
  it = iter(ds)
  for _ in range(3):  # mid-epoch (an epoch is 10 records)
    next(it)
  state = it.get_state()
  expected = [_record_ids(next(it)) for _ in range(5)]
  fresh = iter(ds)
  fresh.set_state(state)
  assert [_record_ids(next(fresh)) for _ in range(5)] == expected


def test_two_processes_cover_each_epoch_example_once():
  source, index = _toy(groups=8, puzzles=2, examples=3)
  epoch = index.epoch_length  # 24
  per_process = [list(pipeline.train_dataset(source, index, seed=5, global_batch_size=8,
                                             num_epochs=1, process_index=p, process_count=2))
                 for p in range(2)]
  single = list(pipeline.train_dataset(source, index, seed=5, global_batch_size=8, num_epochs=1))
  assert len(per_process[0]) == len(per_process[1]) == len(single) == epoch // 8
  for b0, b1, whole in zip(*per_process, single):
    assert sorted(_record_ids(b0) + _record_ids(b1)) == sorted(_record_ids(whole))
  seen = [r for batches in per_process for b in batches for r in _record_ids(b)]
  assert len(seen) == len(set(seen)) == epoch


@pytest.mark.parametrize("before,after", [(1, 2), (2, 4), (4, 1)])
def test_a_stream_position_resumes_on_another_number_of_processes(before, after):
  """Checkpointed by `before` processes, resumed by `after`: the next global batches hold the
  same examples as an uninterrupted one-process stream's (rows split differently)."""
  source, index = _toy(groups=8, puzzles=2, examples=3)
  make = lambda p, n: iter(pipeline.train_dataset(source, index, seed=7, global_batch_size=8,
                                                  num_epochs=3, process_index=p, process_count=n))
  whole = make(0, 1)
  expected = [sorted(_record_ids(next(whole))) for _ in range(5)][3:]
  first = [make(p, before) for p in range(before)]
  for _ in range(3):
    for it in first:
      next(it)
  positions = [pipeline.stream_position(it, before) for it in first]
  assert positions == [{"next_index": 3 * 8}] * before  # the same on every process
  resumed = [make(p, after) for p in range(after)]
  for it in resumed:
    pipeline.seek(it, positions[0], after)
  got = [sorted(r for it in resumed for r in _record_ids(next(it))) for _ in range(2)]
  assert got == expected


def test_eval_batches_cover_everything_once_and_pad():
  source, _ = _toy(groups=2, puzzles=1, examples=5)
  batches = list(pipeline.eval_batches(source, global_batch_size=4))
  assert [b["valid"].tolist() for b in batches] == [[True] * 4, [True] * 4, [True, True, False, False]]
  ids = [r for b in batches for r, v in zip(_record_ids(b), b["valid"]) if v]
  assert ids == _record_ids({"inputs": np.stack([source[i]["inputs"] for i in range(10)])})


def test_mismatched_source_and_index_is_an_error():
  source, index = _toy()
  bad = pipeline.PuzzleIndex.from_sizes([1, 1], [2])
  with pytest.raises(ValueError, match="source has 30 records, the puzzle index 2"):
    pipeline.train_dataset(source, bad, seed=0, global_batch_size=2, num_epochs=1)
