"""`trm_jax.load`: a run read back from its workdir or from one checkpoint on its own."""

import json
import shutil

import jax
import numpy as np
import pytest

import trm_jax
from trm_jax import main

from tests.test_main import small_smoke_config


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  cfg = small_smoke_config()
  cfg.train.max_steps = 2
  cfg.eval.max_batches = 1
  workdir = tmp_path_factory.mktemp("run")
  main.run(cfg, str(workdir))
  return workdir


def test_load_round_trip_from_the_workdir_alone(smoke_run):
  run = trm_jax.load(smoke_run)
  assert run.step == 2 and run.checkpoint == smoke_run / "checkpoints" / "2"
  assert run.config.to_dict() == json.loads((smoke_run / "config.json").read_text())
  assert run.model_config.seq_len == run.config.model.seq_len > 0
  # The evaluation weights: the EMA of the trainable params, a plain dict the model accepts.
  params = jax.tree.map(np.asarray, run.params)
  assert set(params) >= {"net", "lm_head"}
  carry = trm_jax.initial_carry(run.model_config, 2)
  batch = {"inputs": np.ones((2, run.model_config.seq_len), np.int32),
           "puzzle_identifiers": np.zeros(2, np.int32)}
  _, logits, _, _ = trm_jax.supervision_step(run.params, run.model_config, carry, batch)
  assert logits.shape == (2, run.model_config.seq_len, run.model_config.vocab_size)


def test_a_checkpoint_moved_on_its_own_still_says_what_it_is(smoke_run, tmp_path):
  """The resolved config is saved inside every checkpoint: a step directory copied away from
  its workdir (no config.json next to it) loads with the same config and weights."""
  moved = tmp_path / "elsewhere" / "checkpoints" / "2"
  shutil.copytree(smoke_run / "checkpoints" / "2", moved)
  original, alone = trm_jax.load(smoke_run), trm_jax.load(moved)
  assert not (moved.parent.parent / "config.json").exists()
  assert alone.config.to_dict() == original.config.to_dict() and alone.step == 2
  jax.tree.map(np.testing.assert_array_equal, alone.params, original.params)


def test_a_run_saved_with_the_kernels_in_its_model_config_loads(smoke_run, tmp_path):
  """Runs saved before issue 29 hold matmul and attention in their model config (here a
  config.json next to checkpoints that hold none): read back, they are execution settings."""
  old = tmp_path / "old"
  shutil.copytree(smoke_run, old)
  shutil.rmtree(old / "checkpoints" / "2" / "config")
  saved = json.loads((old / "config.json").read_text())
  del saved["execution"]
  saved["model"].update(matmul="xla", attention="auto")
  (old / "config.json").write_text(json.dumps(saved))
  run = trm_jax.load(old)
  assert "matmul" not in run.model_config and "attention" not in run.model_config
  assert run.config.execution.to_dict() == {"matmul": "xla", "attention": "auto"}
  assert run.model_config.to_dict() == trm_jax.load(smoke_run).model_config.to_dict()


def test_load_names_what_is_missing(smoke_run, tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint of step 7"):
    trm_jax.load(smoke_run, step=7)
  with pytest.raises(FileNotFoundError, match="no such run directory"):
    trm_jax.load(tmp_path / "nothing")


def _other_puzzles(name="generated_4x4_other", size=4):
  """The smoke run's task with other puzzles: another generator seed, far fewer training
  records (so the run's data-stream position would be out of range) and more test puzzles."""
  cfg = small_smoke_config()
  cfg.data.generate.seed = 5
  cfg.data.generate.num_train = 8
  cfg.data.generate.num_test = 24
  cfg.data.generate.size = size
  cfg.data.builder_config.size = size
  cfg.data.builder_config.name = name
  return cfg


def test_eval_only_on_other_puzzles_reads_only_the_weights(smoke_run, tmp_path):
  """--eval_only restores no training state: the run evaluates on puzzles of the same shapes
  from another dataset, and scores what the public API computes from its weights."""
  from trm_jax.data import datasets, pipeline
  cfg = _other_puzzles()
  result = main.run(cfg, str(tmp_path / "eval"), eval_only=True,
                    checkpoint_dir=str(smoke_run / "checkpoints"))
  run = trm_jax.load(smoke_run)
  test = datasets.builder_for(cfg.data).as_data_source()["test"]
  assert result["count"] == len(test) > 16
  batch = pipeline.to_model_batch({k: np.stack([test[i][k] for i in range(len(test))])
                                   for k in ("inputs", "labels", "puzzle_identifier")})
  carry = trm_jax.initial_carry(run.model_config, len(test))
  mask = batch["labels"] != -100
  for step in range(run.model_config.halt_max_steps):
    carry, logits, _, _ = trm_jax.supervision_step(run.params, run.model_config, carry, batch)
    exact = ((np.asarray(logits).argmax(-1) == batch["labels"]) | ~mask).all(-1).mean()
    assert result["exact_accuracy_per_step"][step] == pytest.approx(exact), step
  assert (tmp_path / "eval" / f"eval_table_step{run.step}.txt").exists()
  assert not (tmp_path / "eval" / "checkpoints").exists()


def test_eval_only_names_a_data_shape_the_model_cannot_take(smoke_run, tmp_path):
  cfg = _other_puzzles("generated_6x6_other", size=6)
  with pytest.raises(ValueError, match=r"has seq_len = 36, the model of .* was trained with 16"):
    main.run(cfg, str(tmp_path / "eval"), eval_only=True,
             checkpoint_dir=str(smoke_run / "checkpoints"))
