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


def test_load_names_what_is_missing(smoke_run, tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint of step 7"):
    trm_jax.load(smoke_run, step=7)
  with pytest.raises(FileNotFoundError, match="no such run directory"):
    trm_jax.load(tmp_path / "nothing")
