"""TFDS builders: built from files the tests write (or ship), read back without TensorFlow."""

import hashlib
import pathlib

import ml_collections
import numpy as np
import pytest

from trm_jax.data import arc, datasets, generate, splits, sudoku

FIXTURE_ARC = pathlib.Path(__file__).parent / "fixtures" / "arc"


def _sudoku_cfg(tmp_path, manual_dir, name="t", **builder):
  values = dict(name=name, size=4, subsample=0, num_aug=3, test_subsample=0, seed=0)
  values.update(builder)
  return ml_collections.ConfigDict(dict(
      builder="sudoku", builder_config=values, manual_dir=str(manual_dir),
      data_dir=str(tmp_path / "tfds"), generate=dict(kind="")))


def _digest(source) -> str:
  h = hashlib.sha256()
  for i in range(len(source)):
    for key, value in sorted(source[i].items()):
      h.update(key.encode())
      h.update(np.asarray(value).tobytes())
  return h.hexdigest()


@pytest.fixture(scope="module")
def sudoku_csvs(tmp_path_factory):
  out = tmp_path_factory.mktemp("raw")
  generate.sudoku_csvs(out, size=4, num_train=40, num_test=10, seed=1)
  return out


def test_sudoku_build_layout_and_validity(tmp_path, sudoku_csvs):
  data = datasets.prepare(_sudoku_cfg(tmp_path, sudoku_csvs))
  assert data.metadata["seq_len"] == 16 and data.metadata["vocab_size"] == 6
  assert len(data.train) == 40 * 4 and len(data.test) == 10
  assert data.train_index.num_groups == 40 and data.train_index.epoch_length == 40
  originals = sudoku.read_csv(sudoku_csvs / "train.csv")
  for i in range(len(data.train)):
    record = data.train[i]
    answer = record["labels"].astype(np.int64) - 1
    question = record["inputs"].astype(np.int64) - 1
    assert sudoku.is_valid_solution(answer, 4)
    assert np.all((question == 0) | (question == answer))
    assert record["group"] == i // 4
    if i % 4 == 0:  # the original comes first in its group
      np.testing.assert_array_equal(question, originals.questions[i // 4])


def test_same_seed_is_byte_identical_and_a_different_seed_differs(tmp_path, sudoku_csvs):
  a = datasets.prepare(_sudoku_cfg(tmp_path / "a", sudoku_csvs, seed=7))
  b = datasets.prepare(_sudoku_cfg(tmp_path / "b", sudoku_csvs, seed=7))
  c = datasets.prepare(_sudoku_cfg(tmp_path / "c", sudoku_csvs, seed=8))
  assert _digest(a.train) == _digest(b.train)
  assert _digest(a.train) != _digest(c.train)
  files = lambda root: sorted(p.read_bytes() for p in (root / "tfds").rglob("*.array_record*"))
  assert files(tmp_path / "a") == files(tmp_path / "b")


@pytest.mark.parametrize("corruption,message", [
    (lambda q, a: (q[:-1], a), "line 3: question has 15 characters"),
    (lambda q, a: (q[:5] + "7" + q[6:], a), "line 3"),
    (lambda q, a: (q, a[:1] + a[0] + a[2:] if a[0] != a[1] else a[:1] + a[2] + a[2:]), "line 3"),
])
def test_malformed_csv_names_file_and_line_and_leaves_nothing(tmp_path, sudoku_csvs, corruption,
                                                              message):
  raw = tmp_path / "raw"
  raw.mkdir()
  (raw / "test.csv").write_text((sudoku_csvs / "test.csv").read_text())
  lines = (sudoku_csvs / "train.csv").read_text().splitlines()
  source, question, answer, rating = lines[2].split(",")
  question, answer = corruption(question, answer)
  lines[2] = ",".join([source, question, answer, rating])
  (raw / "train.csv").write_text("\n".join(lines) + "\n")
  cfg = _sudoku_cfg(tmp_path, raw)
  with pytest.raises(ValueError, match=f"train.csv.*{message}"):
    datasets.prepare(cfg)
  leftovers = [p for p in (tmp_path / "tfds").rglob("*") if p.is_file()] if (tmp_path / "tfds").exists() else []
  assert not [p for p in leftovers if "array_record" in p.name or p.name == "dataset_info.json"]


def test_missing_file_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"train\.csv"):
    datasets.prepare(_sudoku_cfg(tmp_path, tmp_path / "nowhere"))


def test_missing_manual_dir_names_the_field_and_the_files(tmp_path):
  cfg = _sudoku_cfg(tmp_path, "")
  with pytest.raises(FileNotFoundError,
                     match=r"config\.data\.manual_dir is not set.*'train\.csv', 'test\.csv'"):
    datasets.prepare(cfg)
  (tmp_path / "raw").mkdir()
  (tmp_path / "raw" / "train.csv").write_text("source,q,a,rating\n")
  cfg.manual_dir = str(tmp_path / "raw")
  with pytest.raises(FileNotFoundError, match=r"lacks \['test\.csv'\]"):
    datasets.prepare(cfg)
  assert not (tmp_path / "tfds").exists() or not list((tmp_path / "tfds").rglob("*.array_record*"))


def test_predefined_config_names_select_the_predefined_config(tmp_path):
  """The official recipes name predefined configs: TFDS refuses a second object under such a
  name, so the predefined one is used, and other values under its name are refused."""
  recipe = dict(name="extreme_1k_aug_1000", size=9, subsample=1000, num_aug=1000,
                test_subsample=0, seed=0)
  cfg = _sudoku_cfg(tmp_path, tmp_path, **recipe)
  builder = datasets.builder_for(cfg)
  assert builder.builder_config is datasets.builders.Sudoku.builder_configs["extreme_1k_aug_1000"]
  cfg.builder_config.subsample = 64
  with pytest.raises(ValueError, match=r"predefined 'sudoku' config, but subsample=64 "
                                       r"\(predefined: 1000\).*new name"):
    datasets.builder_for(cfg)
  cfg.builder_config.name = "extreme_64"
  assert datasets.builder_for(cfg).builder_config.subsample == 64
  arc_cfg = ml_collections.ConfigDict(dict(
      builder="arc", builder_config=dict(name="arc2_aug_1000", subsets=["training2", "evaluation2",
                                         "concept"], test_set_name="evaluation2"),
      manual_dir="", data_dir=str(tmp_path / "tfds"), generate=dict(kind="")))
  assert datasets.builder_for(arc_cfg).builder_config.name == "arc2_aug_1000"


def test_unknown_builder_field_is_named(tmp_path, sudoku_csvs):
  cfg = _sudoku_cfg(tmp_path, sudoku_csvs)
  cfg.builder_config.num_augs = 3
  with pytest.raises(ValueError, match="num_augs"):
    datasets.prepare(cfg)


def test_arc_build_from_fixtures_inverts_to_the_originals(tmp_path):
  cfg = ml_collections.ConfigDict(dict(
      builder="arc", builder_config=dict(name="fixture", subsets=("training", "evaluation"),
                                         test_set_name="evaluation", num_aug=8, seed=42),
      manual_dir=str(FIXTURE_ARC), data_dir=str(tmp_path / "tfds"), generate=dict(kind="")))
  data = datasets.prepare(cfg)
  tasks = arc.load_tasks(FIXTURE_ARC / "arc-agi_evaluation_challenges.json",
                         FIXTURE_ARC / "arc-agi_evaluation_solutions.json")
  assert data.metadata["seq_len"] == 900 and data.metadata["vocab_size"] == 12
  assert data.train_index.num_records == len(data.train)
  for i in range(len(data.test)):
    record = data.test[i]
    task = tasks[record["task_id"].decode()]
    aug = arc.Augmentation(int(record["dihedral"]), np.asarray(record["colors"]))
    label = arc.decode(record["labels"].astype(np.int32))
    np.testing.assert_array_equal(aug.invert(label), task.test[int(record["test_index"])].output)


# ---------------------------------------------------------------------------------------------
# Validation splits: carved from the training puzzles, disjoint by puzzle and augmentation.


def test_sudoku_validation_holds_out_whole_groups_and_keeps_their_originals(tmp_path,
                                                                             sudoku_csvs):
  full = datasets.prepare(_sudoku_cfg(tmp_path / "full", sudoku_csvs))
  data = datasets.prepare(_sudoku_cfg(tmp_path / "val", sudoku_csvs, validation_fraction=0.2))
  assert full.validation is None
  # 40 puzzles x (1 + 3 augmentations): 8 groups leave train whole, their originals validate.
  assert len(data.validation) == 8 and len(data.train) == 32 * 4
  assert data.train_index.num_groups == 32 and data.train_index.epoch_length == 32
  assert len(data.test) == 10 and _digest(data.test) == _digest(full.test)
  originals = sudoku.read_csv(sudoku_csvs / "train.csv")
  source_rows = {q.tobytes(): i for i, q in enumerate(originals.questions.astype(np.int64))}
  held = set()
  for i in range(len(data.validation)):
    question = data.validation[i]["inputs"].astype(np.int64) - 1
    held.add(source_rows[question.tobytes()])  # an original training puzzle, not augmented
  assert len(held) == 8
  # No record of a held-out puzzle's group (its augmentations included) is left in train.
  kept = {data.train[i * 4]["inputs"].astype(np.int64).tobytes() for i in range(32)}
  full_groups = [[full.train[g * 4 + j]["inputs"].tobytes() for j in range(4)]
                 for g in range(40)]
  train_inputs = {data.train[i]["inputs"].tobytes() for i in range(len(data.train))}
  for g in held:
    assert not set(full_groups[g]) & train_inputs
  assert len(kept) == 32
  assert [data.train[i]["group"] for i in range(0, len(data.train), 4)] == list(range(32))


def test_validation_split_has_its_own_dataset_name_and_is_seeded(tmp_path, sudoku_csvs):
  a = datasets.builder_config_for(_sudoku_cfg(tmp_path, sudoku_csvs, validation_fraction=0.2))
  b = datasets.builder_config_for(_sudoku_cfg(tmp_path, sudoku_csvs, validation_fraction=0.2,
                                              validation_seed=3))
  assert (a.name, b.name) == ("t_val0.2", "t_val0.2s3")
  one = datasets.prepare(_sudoku_cfg(tmp_path / "a", sudoku_csvs, validation_fraction=0.2))
  other = datasets.prepare(_sudoku_cfg(tmp_path / "b", sudoku_csvs, validation_fraction=0.2,
                                       validation_seed=3))
  assert _digest(one.validation) != _digest(other.validation)
  with pytest.raises(ValueError, match="validation_fraction = 1.5"):
    datasets.prepare(_sudoku_cfg(tmp_path / "c", sudoku_csvs, validation_fraction=1.5))
  assert [splits.validation_count(f, 40) for f in (0, 0.001, 0.2, 0.999)] == [0, 1, 8, 39]


def test_nqueens_validation_boards_never_occur_in_training():
  from trm_jax.data.pipeline import PuzzleIndex
  # Groups of 2 boards; group 1's original repeats a board of group 0, group 2's is new.
  inputs = np.asarray([[1, 0], [0, 1], [0, 1], [1, 1], [2, 2], [2, 0]], np.uint8)
  arrays = {"inputs": inputs, "labels": inputs + 1, "puzzle_identifier": np.zeros(6, np.int32),
            "group": np.repeat(np.arange(3, dtype=np.int32), 2)}
  index = PuzzleIndex.from_sizes(np.ones(6, np.int64), [2, 2, 2])
  for seed in range(20):  # whichever two groups are held out
    (kept, kept_index), (validation, _) = splits.carve_validation(arrays, index, 2, seed)
    kept_inputs = {row.tobytes() for row in kept["inputs"]}
    assert len(kept["inputs"]) == 2 and kept_index.num_groups == 1
    assert list(kept["group"]) == [0, 0]
    firsts = {row.tobytes() for row in validation["inputs"]}
    assert not firsts & kept_inputs
    assert firsts <= {inputs[0].tobytes(), inputs[2].tobytes(), inputs[4].tobytes()}
    # group 1's original [0, 1] is group 0's augmentation: dropped when group 0 is trained on
    if kept_inputs == {inputs[0].tobytes(), inputs[1].tobytes()}:
      assert firsts == {inputs[4].tobytes()}


def test_arc_validation_tasks_keep_their_demonstrations_in_train(tmp_path):
  tasks = arc.load_subsets(FIXTURE_ARC, ["training", "evaluation"])
  held = arc.validation_task_ids(tasks, "evaluation", 0.5, seed=0)
  assert len(held) == 2 and all(subset == "training" for subset, _ in held)
  examples = arc.build_examples(tasks, "evaluation", num_aug=4, seed=42, validation_fraction=0.5)
  official = arc.build_examples(tasks, "evaluation", num_aug=4, seed=42)
  assert "validation" not in official
  validation, train = examples["validation"], examples["train"]
  held_ids = {task_id for _, task_id in held}
  assert {validation[i]["task_id"] for i in range(len(validation))} == held_ids
  # Every (augmented) test pair of a held-out task validates, untranslated; none trains.
  n_test = sum(len(tasks["training"][t].test) for t in held_ids)
  assert len(validation) == n_test * 5
  val_labels = {validation[i]["labels"].tobytes() for i in range(len(validation))}
  train_ids = set()
  for i in range(len(train)):
    assert train[i]["labels"].tobytes() not in val_labels
    train_ids.add(int(train[i]["puzzle_identifier"]))
  # ... while their demonstrations train the embeddings validation reads.
  assert {int(validation[i]["puzzle_identifier"]) for i in range(len(validation))} <= train_ids
  assert len(train) < len(official["train"]) and examples["test"].num_groups == official[
      "test"].num_groups
