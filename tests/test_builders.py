"""TFDS builders: built from files the tests write (or ship), read back without TensorFlow."""

import hashlib
import pathlib

import ml_collections
import numpy as np
import pytest

from trm_jax.data import arc, datasets, generate, sudoku

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
