"""Shared test set-up: CPU only, strict numerics, fixture helpers."""

import json
import os
import pathlib

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"


def load_official(name: str):
  """An official-reference fixture: (model config, state_dict, npz)."""
  from trm_jax import convert
  data = np.load(FIXTURES / name)
  arch = json.loads(str(data["config_json"]))
  cfg = convert.model_config_from_official(arch)
  state_dict = {k[len("w/"):]: data[k] for k in data.files if k.startswith("w/")}
  return cfg, state_dict, data


def official_batch(data):
  """The batch of an official-reference fixture as int32 arrays."""
  import jax.numpy as jnp
  return {"inputs": jnp.asarray(data["batch/inputs"], jnp.int32),
          "labels": jnp.asarray(data["batch/labels"], jnp.int32),
          "puzzle_identifiers": jnp.asarray(data["batch/puzzle_identifiers"], jnp.int32)}


@pytest.fixture
def shared_dir():
  if not SHARED.is_dir():
    pytest.skip(f"{SHARED} not present (only the developers' checkouts have ../shared)")
  return SHARED
