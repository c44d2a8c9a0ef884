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


@pytest.fixture(autouse=True, scope="session")
def _temporary_files_under_basetemp(tmp_path_factory):
  """Temporary files go under pytest's base directory (pruned to the last 3 sessions): TFDS's
  DatasetInfo.initialize_from_bucket leaves an empty `/tmp/tmp*tfds` directory for every
  builder made before its dataset exists, some 600 in a full run."""
  import tempfile
  before = tempfile.tempdir
  tempfile.tempdir = str(tmp_path_factory.mktemp("tempfile"))
  yield
  tempfile.tempdir = before
SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"


def random_batch(spec, batch_size: int, seed: int):
  """A random batch for a model spec: tokens in [1, V), labels = tokens + 1 (mod V)."""
  import jax.numpy as jnp
  rng = np.random.default_rng(seed)
  x = rng.integers(1, spec.vocab_size, (batch_size, spec.seq_len))
  return {"inputs": jnp.asarray(x, jnp.int32),
          "labels": jnp.asarray((x + 1) % spec.vocab_size, jnp.int32),
          "puzzle_identifiers": jnp.asarray(rng.integers(0, spec.num_puzzle_identifiers,
                                                         batch_size), jnp.int32)}


# bf16: neither side is exact, and each rounding order (PyTorch's kernels, XLA's dot, the CPU
# kernels) lands elsewhere. Both are compared to the fp32 result with the same weights; ours may
# deviate from it by at most this factor times what the official bf16 code deviates
# (BUILD_NOTES.md, "bf16 parity bounds").
BF16_FACTOR = 2.0


def bf16_matmul_paths():
  """bf16 runs on XLA's dot everywhere and on each CPU kernel this machine has."""
  from trm_jax.kernels import cpu_gemm
  return ["xla", *(pytest.param(isa, marks=pytest.mark.skipif(
      not cpu_gemm.available(isa),
      reason=f"{isa} path unavailable here: {cpu_gemm.unavailable_reason(isa)}"))
      for isa in cpu_gemm.ISAS)]


def within_official_noise(ours, official, fp32, what, check_max=True):
  """Max and mean deviation from the fp32 result at most BF16_FACTOR x the official bf16's."""
  ours_err, official_err = np.abs(ours - fp32), np.abs(official - fp32)
  assert not check_max or ours_err.max() <= BF16_FACTOR * official_err.max(), (
      f"{what}: max {ours_err.max():.3g} vs official {official_err.max():.3g}")
  assert ours_err.mean() <= BF16_FACTOR * official_err.mean(), (
      f"{what}: mean {ours_err.mean():.3g} vs official {official_err.mean():.3g}")


def assert_matches_official_training(loss, metrics, grads, data, grad_rtol=2e-5,
                                     same_keys=True):
  """One training call against an official reference: total loss and every `train/metric/`
  to 1e-5, every `grad/` within `grad_rtol` of its largest entry (and, with `same_keys`, no
  gradient the reference lacks)."""
  assert loss == pytest.approx(float(data["train/total_loss"]), rel=1e-5)
  for key in data.files:
    if key.startswith("train/metric/"):
      name = key.removeprefix("train/metric/")
      assert metrics[name] == pytest.approx(float(data[key]), rel=1e-5, abs=1e-6), name
  reference = {k.removeprefix("grad/"): data[k] for k in data.files if k.startswith("grad/")}
  if same_keys:
    assert set(grads) == set(reference)
  for key, ref in reference.items():
    err = np.abs(grads[key] - ref).max() / np.abs(ref).max()
    assert err <= grad_rtol, f"{key}: relative error {err:.2e}"


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


def official_training_call(cfg, state_dict, data, prepare=None):
  """One training call through `train.supervision_loss` from a fresh ACT state on a fixture's
  weights and batch: (loss, metrics, gradients by official key + 'puzzle_emb_local').
  `prepare(state)` may edit the refreshed state first (DIS: the path the official call drew)."""
  import jax
  import jax.numpy as jnp
  from trm_jax import act, convert, train
  from trm_jax.config import ModelSpec
  spec = ModelSpec.from_config(cfg)
  params = convert.from_official_state_dict(state_dict, cfg)
  batch = official_batch(data)
  state = act.refresh(spec, act.initial_state(cfg, batch), batch, jax.random.key(0))
  if prepare is not None:
    prepare(state)
  table = params.pop("puzzle_emb")
  rows = jnp.take(table, state["data"]["puzzle_identifiers"], axis=0)

  def loss_fn(dense, rows):
    loss, (_, metrics) = train.supervision_loss({**dense, "puzzle_emb": table}, rows, spec, state,
                                                jax.random.key(1))
    return loss, metrics

  (loss, metrics), (grads, row_grads) = jax.value_and_grad(loss_fn, (0, 1), has_aux=True)(
      params, rows)
  by_key = {"puzzle_emb_local": np.asarray(row_grads)}
  names = convert.official_names(spec)
  for path, grad in convert._flatten(grads).items():
    if not path.endswith("_init"):
      key, transposed = names[path]
      by_key[key] = np.asarray(grad.T if transposed else grad)
  return float(loss), {k: float(v) for k, v in metrics.items()}, by_key


@pytest.fixture
def shared_dir():
  if not SHARED.is_dir():
    pytest.skip(f"{SHARED} not present (only the developers' checkouts have ../shared)")
  return SHARED
