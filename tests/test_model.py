import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import trm_jax
from trm_jax import act, config, losses, model, nn, recursion, schemes
from trm_jax.config import ModelSpec


def _batch(spec, batch_size=3, seed=0):
  rng = np.random.default_rng(seed)
  inputs = rng.integers(1, spec.vocab_size, (batch_size, spec.seq_len))
  return {
      "inputs": jnp.asarray(inputs, jnp.int32),
      "labels": jnp.asarray(rng.integers(1, spec.vocab_size, inputs.shape), jnp.int32),
      "puzzle_identifiers": jnp.asarray(rng.integers(0, spec.num_puzzle_identifiers, batch_size),
                                        jnp.int32),
  }


def _random_params(cfg, seed=0):
  """Initialised params with the zero/constant-initialised heads re-drawn, so all matter."""
  params = trm_jax.init_params(cfg, jax.random.key(seed))
  keys = jax.random.split(jax.random.key(seed + 1), 3)
  params["puzzle_emb"] = 0.5 * jax.random.normal(keys[0], params["puzzle_emb"].shape)
  params["q_head"] = {"kernel": 0.05 * jax.random.normal(keys[1], (params["y_init"].shape[0], 2)),
                      "bias": jax.random.normal(keys[2], (2,))}
  return params


@pytest.mark.parametrize("preset,expected_millions", [
    ("sudoku_mlp_t", 5.03), ("sudoku_attention", 6.83), ("maze_attention", 6.82),
    ("arc_attention", 6.83)])
def test_official_parameter_counts(preset, expected_millions):
  params = trm_jax.abstract_params(config.PRESETS[preset]())
  assert trm_jax.count_params(params) / 1e6 == pytest.approx(expected_millions, abs=0.01)


def _attention_reference(q, k, v, round_probs):
  """Softmax attention per head in float64 from [B, T, N, H] arrays; `round_probs` rounds
  the probabilities to bf16 (what a bf16 model multiplies V by)."""
  q, k, v = (np.asarray(jnp.asarray(x, jnp.float32), np.float64) for x in (q, k, v))
  scores = np.einsum("btnh,bsnh->bnts", q, k) / math.sqrt(q.shape[-1])
  e = np.exp(scores - scores.max(-1, keepdims=True))
  probs = e / e.sum(-1, keepdims=True)
  if round_probs:
    probs = np.asarray(jnp.asarray(probs.astype(np.float32), jnp.bfloat16), np.float64)
  return np.einsum("bnts,bsnh->btnh", probs, v)


def test_dot_product_attention_matches_float64():
  rng = np.random.default_rng(0)
  q, k, v = (rng.standard_normal((2, 7, 3, 8)).astype(np.float32) for _ in range(3))
  out = nn.dot_product_attention(q, k, v)
  np.testing.assert_allclose(out, _attention_reference(q, k, v, False), rtol=1e-5, atol=1e-6)
  # bf16: probabilities rounded to bf16, the output rounded once from an fp32 sum. At Sudoku's
  # shape and batch 32, jax.nn.dot_product_attention's XLA path rounds 41% of these differently.
  qb, kb, vb = (jnp.asarray(rng.standard_normal((32, 97, 8, 64)), jnp.bfloat16) for _ in range(3))
  out = np.asarray(jnp.asarray(jax.jit(nn.dot_product_attention)(qb, kb, vb), jnp.float32))
  want = np.asarray(jnp.asarray(_attention_reference(qb, kb, vb, True).astype(np.float32),
                                jnp.bfloat16).astype(jnp.float32))
  # Only where an fp32 rounding (of the softmax or of the sum) flips a bf16 one.
  assert np.mean(out != want) < 0.001
  np.testing.assert_allclose(out, want, rtol=2**-7, atol=2**-9 * np.abs(want).max())


def test_swiglu_width_rounding():
  assert nn.swiglu_width(512, 4) == 1536
  assert nn.swiglu_width(97, 4) == 512  # mlp_t over 81 + 16 positions: round(258.7) -> 512


def test_truncation_correction_constant():
  # Std of N(0,1) truncated to [-2, 2] (the constant flax/jax also use).
  assert nn.truncated_lecun_std_correction() == pytest.approx(0.87962566103423978, rel=1e-12)


def test_init_follows_official_recipe():
  cfg = config.model_config(seq_len=16, vocab_size=11, hidden_size=256, num_heads=4,
                            puzzle_emb_ndim=256, num_puzzle_identifiers=3)
  params = trm_jax.init_params(cfg, jax.random.key(0))
  np.testing.assert_array_equal(params["q_head"]["kernel"], 0.0)
  np.testing.assert_array_equal(params["q_head"]["bias"], -5.0)
  np.testing.assert_array_equal(params["puzzle_emb"], 0.0)
  qkv = np.asarray(params["net"]["layers"]["0"]["mixer"]["qkv"]["kernel"])
  std = 1 / math.sqrt(256)
  assert np.std(qkv) == pytest.approx(std, rel=0.02)
  assert np.abs(qkv).max() <= 2 * std / nn.truncated_lecun_std_correction() + 1e-6
  emb = np.asarray(params["embed_tokens"])
  assert np.std(emb) == pytest.approx(std, rel=0.1)
  assert np.std(np.asarray(params["y_init"])) == pytest.approx(1.0, rel=0.2)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))


@pytest.mark.parametrize("overrides", [
    {}, {"mlp_t": True, "pos_encodings": "none"}, {"pos_encodings": "learned"},
    {"pos_encodings": "none", "puzzle_emb_ndim": 0, "puzzle_emb_len": 0},
    {"compute_dtype": "bfloat16"}])
def test_supervision_step_shapes_and_dtypes(overrides):
  cfg = config.tiny()
  cfg.update(overrides)
  spec = ModelSpec.from_config(cfg)
  params = trm_jax.init_params(cfg, jax.random.key(0))
  carry = trm_jax.initial_carry(cfg, 3)
  carry, logits, q_halt, q_continue = trm_jax.supervision_step(params, cfg, carry, _batch(spec))
  chex.assert_shape(logits, (3, spec.seq_len, spec.vocab_size))
  chex.assert_shape([q_halt, q_continue], (3,))
  chex.assert_shape([carry["y"], carry["z"]], (3, spec.total_len, spec.hidden_size))
  assert logits.dtype == q_halt.dtype == jnp.float32
  assert carry["y"].dtype == spec.jnp_compute_dtype
  assert not bool(carry["reset"].any())
  chex.assert_tree_all_finite((carry, logits, q_halt))


class JitAgreementTest(parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_forward(self):
    cfg = config.tiny()
    spec = ModelSpec.from_config(cfg)
    params = _random_params(cfg)
    batch = _batch(spec)
    carry = trm_jax.initial_carry(cfg, 3)
    rows = model.puzzle_rows(params, batch["puzzle_identifiers"])
    step = self.variant(lambda p, c: model.forward(p, spec, c, batch["inputs"], rows))
    reference = model.forward(params, spec, carry, batch["inputs"], rows)
    out = step(params, carry)
    out = step(params, out[0])  # a second step from a non-initial carry
    reference = model.forward(params, spec, reference[0], batch["inputs"], rows)
    chex.assert_trees_all_close(out, reference, atol=1e-5, rtol=1e-5)


def _loss_from(params, spec, carry, batch):
  rows = model.puzzle_rows(params, batch["puzzle_identifiers"])
  new_carry, logits, q_halt, _ = model.forward(params, spec, carry, batch["inputs"], rows)
  loss, _ = losses.act_loss(logits, q_halt, q_halt, batch["labels"], jnp.ones_like(q_halt, bool),
                            jnp.ones(q_halt.shape, jnp.int32))
  return loss, new_carry


@pytest.mark.parametrize("H_cycles", [1, 3])
def test_no_gradient_through_the_no_grad_cycles(H_cycles):
  cfg = config.tiny()
  cfg.H_cycles = H_cycles
  spec = ModelSpec.from_config(cfg)
  params = _random_params(cfg)
  batch = _batch(spec)
  first, _, _, _ = model.forward(params, spec, trm_jax.initial_carry(cfg, 3), batch["inputs"],
                                 model.puzzle_rows(params, batch["puzzle_identifiers"]))
  # The incoming latents reach the loss only through the T-1 no-grad cycles (when T > 1).
  grads = jax.grad(lambda c: _loss_from(params, spec, dict(first, y=c[0], z=c[1]), batch)[0])(
      (first["y"], first["z"]))
  if H_cycles > 1:
    chex.assert_trees_all_equal(grads, jax.tree.map(jnp.zeros_like, grads))
  else:  # With T = 1 the same test sees real gradient: it can fail.
    assert float(jnp.abs(grads[0]).max()) > 0 and float(jnp.abs(grads[1]).max()) > 0
  # The initial latents likewise.
  g = jax.grad(lambda p: _loss_from(p, spec, trm_jax.initial_carry(cfg, 3), batch)[0])(params)
  zero = float(jnp.abs(g["y_init"]).max()) == 0 and float(jnp.abs(g["z_init"]).max()) == 0
  assert zero == (H_cycles > 1)


def test_new_carry_is_detached():
  cfg = config.tiny()
  spec = ModelSpec.from_config(cfg)
  params = _random_params(cfg)
  batch = _batch(spec)
  carry = trm_jax.initial_carry(cfg, 3)
  g = jax.grad(lambda p: jnp.sum(_loss_from(p, spec, carry, batch)[1]["y"]))(params)
  chex.assert_trees_all_equal(g, jax.tree.map(jnp.zeros_like, g))


def test_reset_flag_restarts_only_flagged_rows():
  cfg = config.tiny()
  spec = ModelSpec.from_config(cfg)
  params = _random_params(cfg)
  batch = _batch(spec)
  fresh = trm_jax.initial_carry(cfg, 3)
  once, *_ = trm_jax.supervision_step(params, cfg, fresh, batch)
  partially = dict(once, reset=jnp.array([True, False, False]))
  out_partial = trm_jax.supervision_step(params, cfg, partially, batch)[1]
  out_fresh = trm_jax.supervision_step(params, cfg, fresh, batch)[1]
  out_second = trm_jax.supervision_step(params, cfg, once, batch)[1]
  np.testing.assert_allclose(out_partial[0], out_fresh[0], atol=1e-6)
  np.testing.assert_allclose(out_partial[1:], out_second[1:], atol=1e-6)
  assert not np.allclose(out_fresh[1:], out_second[1:], atol=1e-3)


@pytest.mark.parametrize("remat", ["full", "dots_saveable"])
def test_remat_changes_nothing_numerically(remat):
  cfg = config.tiny()
  spec = ModelSpec.from_config(cfg)
  cfg.remat = remat
  remat_spec = ModelSpec.from_config(cfg)
  params = _random_params(cfg)
  batch = _batch(spec)
  carry = trm_jax.initial_carry(cfg, 3)
  ref = jax.grad(lambda p: _loss_from(p, spec, carry, batch)[0])(params)
  out = jax.grad(lambda p: _loss_from(p, remat_spec, carry, batch)[0])(params)
  chex.assert_trees_all_close(out, ref, atol=1e-6, rtol=1e-5)


def test_forward_pass_accounting():
  assert trm_jax.forward_passes_per_step(config.sudoku_mlp_t()) == 21  # T=3, n=6
  assert trm_jax.forward_passes_per_step(config.arc_attention()) == 15  # T=3, n=4


def test_a_scheme_defined_here_plugs_in():
  calls = []

  @schemes.register_scheme("test_single_z", forward_passes=lambda spec: spec.L_cycles)
  def single_z(spec, net, net_params, latents, x):
    # One latent only: y is refined n times from x, z is left alone.
    calls.append(spec.L_cycles)
    y = jax.lax.fori_loop(0, spec.L_cycles, lambda _, y: net(net_params, y, x), latents.y)
    return recursion.Latents(y, latents.z)

  cfg = config.tiny()
  cfg.scheme = "test_single_z"
  spec = ModelSpec.from_config(cfg)
  params = _random_params(cfg)
  carry = trm_jax.initial_carry(cfg, 3)
  new_carry, logits, *_ = trm_jax.supervision_step(params, cfg, carry, _batch(spec))
  assert calls  # the registered recursion is the one that ran: it refined y, left z as it was
  assert not np.allclose(new_carry["y"], jnp.broadcast_to(params["y_init"], carry["y"].shape))
  np.testing.assert_array_equal(new_carry["z"], jnp.broadcast_to(params["z_init"], carry["z"].shape))
  chex.assert_tree_all_finite(logits)
  # Without `on_y` it traces no updates inside its step: a recorded step is one readout, the
  # step's own, so the per-step analysis still reads it.
  scheme = model.scheme_of(spec)
  assert "update_trace" not in scheme.capabilities() and "halting_head" in scheme.capabilities()
  batch = _batch(spec)
  rows = model.puzzle_rows(params, batch["puzzle_identifiers"])
  _, readout = model.step(params, rows, spec, carry, batch, training=False, record=True)
  assert readout.trace.shape == (1, 3, spec.seq_len, spec.vocab_size)
  np.testing.assert_array_equal(readout.trace[0], readout.logits)


def test_a_metric_a_scheme_does_not_declare_is_refused_when_the_step_is_traced():
  from trm_jax import train
  from trm_jax.schemes.trm import TRM

  @schemes.register
  class Chatty(TRM):
    name = "test_chatty"

    def loss(self, readout, targets, carry, data, halted):
      loss, metrics = super().loss(readout, targets, carry, data, halted)
      return loss, dict(metrics, surprise=jnp.zeros(()))

  cfg = config.tiny()
  cfg.scheme = "test_chatty"
  spec = ModelSpec.from_config(cfg)
  params = _random_params(cfg)
  batch = _batch(spec)
  state = act.refresh(spec, act.initial_state(spec, batch), batch)
  rows = model.puzzle_rows(params, batch["puzzle_identifiers"])
  with pytest.raises(ValueError, match=r"scheme 'test_chatty' reports metric\(s\) \['surprise'\] "
                                       r"that its metrics\(\) does not declare"):
    train.supervision_loss(params, rows, spec, state, jax.random.key(0))
  # A subclass converts weights as its parent does, but the official names stay the parent's.
  from trm_jax import convert
  assert model.scheme_of(cfg).official.arch_name.endswith("@TinyRecursiveReasoningModel_ACTV1")
  assert convert.scheme_for_official("recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1") == "trm"
  assert convert.scheme_for_official("TinyRecursiveReasoningModel_ACTV1") == "trm"
  assert convert.scheme_for_official(
      "recursive_reasoning.trm_singlez@TinyRecursiveReasoningModel_ACTV1") == "trm_singlez"


def test_q_continue_variant_trains():
  # The official code crashes on no_ACT_continue=False; here it yields a finite loss and grads.
  cfg = config.tiny()
  cfg.no_ACT_continue = False
  cfg.halt_exploration_prob = 0.5
  spec = ModelSpec.from_config(cfg)
  params = _random_params(cfg)
  batch = _batch(spec)
  state = act.refresh(spec, act.initial_state(cfg, batch), batch)

  def loss_fn(p):
    new_state, out = act.advance(p, model.puzzle_rows(p, state["data"]["puzzle_identifiers"]),
                                 spec, state, jax.random.key(0), training=True)
    target = out.extras["target_q_continue"]
    loss, metrics = losses.act_loss(out.logits, out.q_halt, out.q_continue,
                                    new_state["data"]["labels"], new_state["halted"],
                                    new_state["carry"]["steps"], target_q_continue=target)
    return loss, (metrics, target)

  (loss, (metrics, target)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  assert bool(((target > 0) & (target < 1)).all())
  assert float(metrics["q_continue_loss"]) > 0
  chex.assert_tree_all_finite((loss, grads))
  assert float(jnp.abs(grads["q_head"]["kernel"][:, 1]).max()) > 0


def test_bad_batch_fails_before_compiling():
  cfg = config.tiny()
  params = trm_jax.init_params(cfg, jax.random.key(0))
  carry = trm_jax.initial_carry(cfg, 2)
  with pytest.raises(ValueError, match=r"batch\['inputs'\] has shape"):
    trm_jax.supervision_step(params, cfg, carry, {"inputs": jnp.zeros((2, 5), jnp.int32),
                                                  "puzzle_identifiers": jnp.zeros(2, jnp.int32)})
  with pytest.raises(KeyError, match="puzzle_identifiers"):
    trm_jax.supervision_step(params, cfg, carry, {"inputs": jnp.zeros((2, 16), jnp.int32)})


def test_recorded_readouts_are_the_logits_after_each_y_update():
  """record=True returns the heads' logits after each of the T y-updates: the first equals a
  T=1 step's logits (the same computation), the last the step's own logits."""
  cfg = config.tiny()  # T = 2
  spec = ModelSpec.from_config(cfg)
  one = ModelSpec.from_config(dict(cfg.to_dict(), H_cycles=1))
  params = _random_params(cfg)
  batch = _batch(spec)
  rows = model.puzzle_rows(params, batch["puzzle_identifiers"])
  carry = trm_jax.initial_carry(cfg, 3)
  _, readout = model.step(params, rows, spec, carry, batch, training=False, record=True)
  _, first = model.step(params, rows, one, carry, batch, training=False)
  chex.assert_shape(readout.trace, (2, 3, spec.seq_len, spec.vocab_size))
  np.testing.assert_allclose(readout.trace[-1], readout.logits, rtol=0, atol=0)
  np.testing.assert_allclose(readout.trace[0], first.logits, rtol=1e-5, atol=1e-5)
  _, plain = model.step(params, rows, spec, carry, batch, training=False)
  np.testing.assert_allclose(plain.logits, readout.logits, rtol=1e-6, atol=1e-6)
