"""HRM as a scheme, against the official HRM of the TRM repository.

`fixtures/official_hrm_att_rope_fp32.npz` is `hrm_att_rope_tiny.npz` of the shared official
references: `HierarchicalReasoningModel_ACTV1` (models/recursive_reasoning/hrm.py of
SamsungSAILMontreal/TinyRecursiveModels @ e7b6871) with the official `ACTLossHead`, PyTorch 2.13
CPU, fp32, random weights; H and L levels of 2 blocks, H_cycles 2, L_cycles 2.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trm_jax
from trm_jax import config, convert, model, recursion
from trm_jax.config import ModelSpec

from conftest import (assert_matches_official_training, load_official, official_batch as _batch,
                      official_training_call)

FIXTURE = "official_hrm_att_rope_fp32.npz"
# Both the shared reference (RoPE) and one made here with learned positions (the 1-token prefix
# then enters the position table): tests/fixtures/make_official_reference.py --only
# official_hrm_learned_fp32.npz.
FIXTURES = [FIXTURE, "official_hrm_learned_fp32.npz"]


def test_official_hrm_arch_converts_to_the_hrm_scheme():
  cfg, state_dict, _ = load_official(FIXTURE)
  spec = ModelSpec.from_config(cfg)
  assert spec.scheme == "hrm" and spec.scheme_options == (("h_layers", 2),) and spec.num_layers == 2
  assert spec.prefix_len == 1 and not spec.no_ACT_continue  # ceil(64 / 64); Q-continue trained
  params = convert.from_official_state_dict(state_dict, cfg)
  assert set(params["h_net"]["layers"]) == {"0", "1"} and set(params["net"]["layers"]) == {"0", "1"}
  assert trm_jax.forward_passes_per_step(cfg) == 2 * (2 + 1)  # H x L z_L updates + H z_H updates
  arch = convert.official_arch(cfg)
  assert arch["name"] == "recursive_reasoning.hrm@HierarchicalReasoningModel_ACTV1"
  assert arch["H_layers"] == 2 and "puzzle_emb_len" not in arch
  assert convert.model_config_from_official(arch).to_dict() == cfg.to_dict()


@pytest.mark.parametrize("fixture", FIXTURES)
def test_eval_steps_match_official(fixture):
  cfg, state_dict, data = load_official(fixture)
  params = convert.from_official_state_dict(state_dict, cfg)
  batch = _batch(data)
  carry = trm_jax.initial_carry(cfg, 4)
  for step in range(3):
    carry, logits, q_halt, q_continue = trm_jax.supervision_step(params, cfg, carry, batch)
    for ours, key in ((logits, "logits"), (q_halt, "q_halt"), (q_continue, "q_continue")):
      np.testing.assert_allclose(ours, data[f"step{step}/{key}"], atol=2e-5, rtol=0,
                                 err_msg=f"{key}, step {step}")


@pytest.mark.parametrize("fixture", FIXTURES)
def test_training_call_matches_official_loss_and_gradients(fixture):
  """One official training call: LM loss, Q-halt and bootstrapped Q-continue losses, metrics,
  and every gradient (both levels, heads, embeddings, the batch's puzzle rows)."""
  cfg, state_dict, data = load_official(fixture)
  assert_matches_official_training(*official_training_call(cfg, state_dict, data), data)


def test_gradients_are_zero_for_what_only_the_no_grad_updates_see():
  """The incoming z_H and z_L enter only updates without gradient (the one-step gradient starts
  at the last z_L update, from the detached latents), so their gradients are exactly zero; the
  input x also feeds that last z_L update, so its gradient is not."""
  cfg, state_dict, _ = load_official(FIXTURE)
  spec = ModelSpec.from_config(cfg)
  params = convert.from_official_state_dict(state_dict, cfg)
  x = jax.random.normal(jax.random.key(0), (2, spec.total_len, spec.hidden_size))
  latents = recursion.Latents(jnp.ones_like(x), jnp.zeros_like(x))
  scheme = model.scheme_of(spec)

  def through(latent_values):
    out = scheme.recurse(params, recursion.Latents(*latent_values), x)
    return jnp.sum(out.y)

  g_y, g_z = jax.grad(through)(tuple(latents))
  np.testing.assert_array_equal(g_y, 0.0)  # z_H and z_L enter the no-grad updates only
  np.testing.assert_array_equal(g_z, 0.0)
  g_x = jax.grad(lambda x: jnp.sum(scheme.recurse(params, latents, x).y))(x)
  assert float(jnp.abs(g_x).max()) > 0  # the last z_L update does carry gradient to x


def test_official_sudoku_recipe_has_about_27m_parameters():
  cfg = config.sudoku_attention()
  cfg.scheme = "hrm"
  cfg.scheme_options = {"h_layers": 4}
  cfg.num_layers = 4
  cfg.H_cycles, cfg.L_cycles = 2, 2
  cfg.no_ACT_continue = False
  cfg.puzzle_emb_len = 0
  params = trm_jax.abstract_params(cfg)
  assert trm_jax.count_params(params, include_puzzle_table=True) / 1e6 == pytest.approx(27.3,
                                                                                       abs=0.1)


def test_hrm_refuses_the_no_q_continue_setting():
  cfg = config.tiny()
  cfg.scheme = "hrm"
  with pytest.raises(ValueError, match="no_ACT_continue"):
    model.scheme_of(cfg)
