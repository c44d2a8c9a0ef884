"""trm_jax against outputs, losses and gradients of the official PyTorch TRM (same weights).

The fixtures were written by `tests/fixtures/make_official_reference.py` from the official code
(SamsungSAILMontreal/TinyRecursiveModels @ e7b6871, PyTorch CPU).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trm_jax
from trm_jax import act, convert, losses, model
from trm_jax.config import ModelSpec

from conftest import FIXTURES, load_official

# (fixture, tolerance on logits / Q logits, tolerance on relative gradient error)
CASES = {
    "official_att_rope_fp32.npz": (5e-5, 2e-5),
    "official_mlpt_fp32.npz": (5e-5, 2e-5),
    "official_att_learned_fp32.npz": (5e-5, 2e-5),
    "official_att_rope_bf16.npz": (0.15, 0.05),
}


def _cases():
  return [pytest.param(name, *tol, id=name.removesuffix(".npz")) for name, tol in CASES.items()
          if (FIXTURES / name).exists()]


def _batch(data):
  return {"inputs": jnp.asarray(data["batch/inputs"], jnp.int32),
          "labels": jnp.asarray(data["batch/labels"], jnp.int32),
          "puzzle_identifiers": jnp.asarray(data["batch/puzzle_identifiers"], jnp.int32)}


@pytest.mark.parametrize("name,atol,_", _cases())
def test_eval_steps_match(name, atol, _):
  cfg, state_dict, data = load_official(name)
  params = convert.from_official_state_dict(state_dict, cfg)
  batch = _batch(data)
  carry = trm_jax.initial_carry(cfg, batch["inputs"].shape[0])
  for step in range(3):
    carry, logits, q_halt, q_continue = trm_jax.supervision_step(params, cfg, carry, batch)
    np.testing.assert_allclose(logits, data[f"step{step}/logits"], atol=atol, rtol=0,
                               err_msg=f"logits, step {step}")
    np.testing.assert_allclose(q_halt, data[f"step{step}/q_halt"], atol=atol, rtol=0)
    np.testing.assert_allclose(q_continue, data[f"step{step}/q_continue"], atol=atol, rtol=0)


@pytest.mark.parametrize("name,atol,grad_rtol", _cases())
def test_training_loss_metrics_and_gradients_match(name, atol, grad_rtol):
  cfg, state_dict, data = load_official(name)
  spec = ModelSpec.from_config(cfg)
  params = convert.from_official_state_dict(state_dict, cfg)
  batch = _batch(data)
  state = act.refresh(act.initial_state(cfg, batch), batch)
  table = params.pop("puzzle_emb")
  rows = jnp.take(table, state["data"]["puzzle_identifiers"], axis=0)

  def loss_fn(dense, rows):
    new_state, out = act.advance({**dense, "puzzle_emb": table}, rows, spec, state,
                                 training=True)
    return losses.act_loss(out["logits"], out["q_halt"], out["q_continue"],
                           new_state["data"]["labels"], new_state["halted"], new_state["steps"],
                           loss_type=spec.loss_type)

  (loss, metrics), (grads, row_grads) = jax.value_and_grad(loss_fn, (0, 1), has_aux=True)(
      params, rows)
  reference_loss = float(data["train/total_loss"])
  assert float(loss) == pytest.approx(reference_loss, rel=max(grad_rtol, 1e-6))
  for key in data.files:
    if key.startswith("train/metric/"):
      name_ = key.removeprefix("train/metric/")
      assert float(metrics[name_]) == pytest.approx(float(data[key]), rel=max(grad_rtol, 1e-5),
                                                    abs=1e-6), name_

  def check(ours, ref, what):
    ref = np.asarray(ref, np.float64)
    err = np.abs(np.asarray(ours, np.float64) - ref).max() / max(np.abs(ref).max(), 1e-12)
    assert err <= grad_rtol, f"{what}: relative error {err:.2e}"

  flat = convert._flatten(grads)
  checked = 0
  for key in data.files:
    if key.startswith("grad/") and key != "grad/puzzle_emb_local":
      path, transpose = convert._our_path(key.removeprefix("grad/"))
      check(flat[path], data[key].T if transpose else data[key], key)
      checked += 1
  check(row_grads, data["grad/puzzle_emb_local"], "puzzle embedding rows")
  assert checked == len([k for k in flat if not k.endswith("_init")])
