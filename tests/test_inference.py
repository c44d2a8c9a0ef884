"""Inference strategies (trm_jax/inference.py), checked against loops over the public API."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trm_jax
from trm_jax import config, inference
from trm_jax.config import ModelSpec

from conftest import random_batch as _batch

from experiments import common


def _model(scheme="trm", seed=0, **options):
  cfg = config.tiny()
  if scheme == "dis":
    cfg = common.dis(cfg, 4)
    for name, value in options.items():
      cfg.scheme_options[name] = value
  params = trm_jax.init_params(cfg, jax.random.key(seed))
  # Larger output weights and puzzle rows than the init's: predictions that move between steps.
  params["lm_head"]["kernel"] = 8 * params["lm_head"]["kernel"]
  params["puzzle_emb"] = jax.random.normal(jax.random.key(seed + 1), params["puzzle_emb"].shape)
  return cfg, ModelSpec.from_config(cfg), params


def _initial_logits(params, spec):
  """lm_head of y_init, by hand (no positions, no bias): the same for every position."""
  row = np.asarray(params["y_init"], np.float64) @ np.asarray(params["lm_head"]["kernel"],
                                                              np.float64)
  return np.broadcast_to(row, (spec.seq_len, spec.vocab_size))


def _public_steps(cfg, params, batch, n, *, w=1.0, feed_back=False):
  """Per-step logits through trm_jax.supervision_step, committing l_u + w (l_c - l_u) by hand
  (and, with `feed_back`, writing its argmax into the DIS carry's fed-back prediction)."""
  carry = trm_jax.initial_carry(cfg, batch["inputs"].shape[0])
  spec = ModelSpec.from_config(cfg)
  l_u = np.broadcast_to(_initial_logits(params, spec), batch["inputs"].shape + (spec.vocab_size,))
  committed = []
  for _ in range(n):
    carry, logits, _, _ = trm_jax.supervision_step(params, cfg, carry, batch)
    l_c = np.asarray(logits, np.float64)
    l_w = l_u + w * (l_c - l_u)
    committed.append(l_w)
    if feed_back:
      carry = dict(carry, prev_pred=jnp.asarray(l_w.argmax(-1), jnp.int32))
    l_u = l_c
  return committed


def test_every_step_reported_and_q_head_halting():
  cfg, spec, params = _model()
  batch = _batch(spec, 8, 0)
  out = inference.eval_batch(params, batch, spec=spec)
  chex.assert_shape([out["token_acc"], out["exact"]], (spec.halt_max_steps, 8))
  np.testing.assert_array_equal(out["steps"], spec.halt_max_steps)
  params["q_head"]["bias"] = jnp.array([5.0, -5.0])
  halting = inference.eval_batch(params, batch, spec=spec,
                                 strategy=inference.Strategy(halt="q"))
  np.testing.assert_array_equal(halting["steps"], 1)


def test_plain_inference_is_the_public_step_loop():
  cfg, spec, params = _model()
  batch = _batch(spec, 6, 1)
  out = inference.eval_batch(params, batch, spec=spec, strategy=inference.Strategy(guidance_w=1.0),
                             step_preds=True)
  steps = _public_steps(cfg, params, batch, spec.halt_max_steps)
  np.testing.assert_array_equal(out["preds"], steps[-1].argmax(-1))
  np.testing.assert_array_equal(out["step_preds"], [s.argmax(-1) for s in steps])


@pytest.mark.parametrize("scheme,w", [("trm", 2.0), ("trm", 0.5), ("dis", 2.0), ("dis", 0.0)])
def test_guided_inference_commits_the_guided_logits(scheme, w):
  cfg, spec, params = _model(scheme)
  batch = _batch(spec, 6, 2)
  committed = _public_steps(cfg, params, batch, spec.halt_max_steps, w=w,
                            feed_back=scheme == "dis")
  labels = np.asarray(batch["labels"])
  out = inference.eval_batch(params, batch, spec=spec, strategy=inference.Strategy(guidance_w=w))
  expected_preds = [c.argmax(-1) for c in committed]
  np.testing.assert_array_equal(out["preds"], expected_preds[-1])
  np.testing.assert_allclose(out["token_acc"],
                             [(p == labels).mean(-1) for p in expected_preds], rtol=1e-6)
  if w != 1.0:  # guidance changed something, or the test proves nothing
    plain = _public_steps(cfg, params, batch, spec.halt_max_steps)
    assert any((c.argmax(-1) != p.argmax(-1)).any() for c, p in zip(committed, plain))


def test_convergence_halting_stops_rows_whose_prediction_stood_still():
  cfg, spec, params = _model("dis")
  # A near rank-1 output head: a position's argmax flips only with the sign of one projection of
  # y, so some rows' predictions stand still between steps and others do not.
  D, V = params["lm_head"]["kernel"].shape
  u, v = jax.random.normal(jax.random.key(7), (D,)), jnp.arange(V, dtype=jnp.float32) - V / 2
  params["lm_head"]["kernel"] = jnp.outer(u, v) + 0.05 * params["lm_head"]["kernel"]
  batch = _batch(spec, 16, 3)
  per_step = [c.argmax(-1) for c in _public_steps(cfg, params, batch, spec.halt_max_steps,
                                                  feed_back=True)]
  initial = _initial_logits(params, spec).argmax(-1)
  for k in (1, 2):
    expected_steps, expected_preds = [], []
    for b in range(16):
      history = [initial] + [p[b] for p in per_step]
      stable, stop = 0, spec.halt_max_steps
      for t in range(1, spec.halt_max_steps + 1):
        stable = stable + 1 if (history[t] == history[t - 1]).all() else 0
        if stable >= k:
          stop = t
          break
      expected_steps.append(stop)
      expected_preds.append(history[stop])
    out = inference.eval_batch(params, batch, spec=spec,
                               strategy=inference.Strategy(halt="converged", converge_k=k))
    np.testing.assert_array_equal(out["steps"], expected_steps)
    np.testing.assert_array_equal(out["preds"], expected_preds)
    # Forward passes are charged per row by `cost_steps` (one rollout: the steps it ran), not
    # the fixed budget.
    np.testing.assert_array_equal(out["cost_steps"], expected_steps)
    if k == 1:
      assert min(expected_steps) < spec.halt_max_steps  # some row did stop early


def test_strategy_config_is_checked_naming_the_field():
  ok = common.eval_recipe()
  assert inference.Strategy.from_config(ok) == inference.Strategy()
  for field, value, match in (("halt", "oracle", "eval.halt"), ("converge_k", 0, "eval.converge_k"),
                              ("guidance_w", float("nan"), "eval.guidance_w")):
    bad = common.eval_recipe(**{field: value})
    with pytest.raises(ValueError, match=match):
      inference.Strategy.from_config(bad)
  dis_spec = ModelSpec.from_config(common.dis(config.tiny(), 4))
  with pytest.raises(ValueError, match="needs a trained halting head: scheme 'dis' has none here"):
    inference.Strategy(halt="q").validate(dis_spec)
  inference.Strategy(halt="converged").validate(dis_spec)


def test_cfg_guidance_mixes_conditioned_and_unconditioned_steps():
  cfg, spec, params = _model("dis", cfg_dropout=0.1)
  batch = _batch(spec, 6, 4)
  w = 2.0
  carry = trm_jax.initial_carry(cfg, 6)
  expected = []
  for _ in range(spec.halt_max_steps):
    _, l_u, _, _ = trm_jax.supervision_step(params, cfg, dict(carry, uncond=jnp.ones(6, bool)),
                                            batch)
    carry, l_c, _, _ = trm_jax.supervision_step(params, cfg, carry, batch)
    guided = np.asarray(l_u, np.float64) + w * (np.asarray(l_c, np.float64) - np.asarray(l_u))
    carry = dict(carry, prev_pred=jnp.asarray(guided.argmax(-1), jnp.int32))
    expected.append(guided.argmax(-1))
  strategy = inference.Strategy(guidance="cfg", guidance_w=w)
  strategy.validate(spec)
  out = inference.eval_batch(params, batch, spec=spec, strategy=strategy)
  np.testing.assert_array_equal(out["preds"], expected[-1])
  plain = inference.eval_batch(params, batch, spec=spec)
  assert (np.asarray(plain["preds"]) != expected[-1]).any()  # guidance changed something
  assert strategy.passes_per_step(spec) == 2 * trm_jax.forward_passes_per_step(cfg)
  for untrained in (config.tiny(), common.dis(config.tiny(), 4)):  # TRM; DIS without dropout
    with pytest.raises(ValueError, match="needs a trained unconditioned mode"):
      strategy.validate(ModelSpec.from_config(untrained))


def test_an_unconditioned_dis_step_sees_no_puzzle():
  from trm_jax import act, train
  from trm_jax import model as model_lib
  cfg, spec, params = _model("dis", cfg_dropout=0.5)
  batch = _batch(spec, 4, 5)
  state = act.refresh(spec, act.initial_state(spec, batch), batch, jax.random.key(0))
  rows = model_lib.puzzle_rows(params, batch["puzzle_identifiers"])
  blank = dict(state, data=dict(state["data"], inputs=jnp.zeros_like(batch["inputs"])))
  # Inference: the unconditioned mode is the step on a PAD input without puzzle rows.
  _, dropped = model_lib.step(params, rows, spec, model_lib.scheme_of(spec).unconditioned(
      state["carry"]), state["data"], training=False)
  _, by_hand = model_lib.step(params, jnp.zeros_like(rows), spec, state["carry"], blank["data"],
                              training=False)
  np.testing.assert_allclose(dropped.logits, by_hand.logits, rtol=1e-6, atol=1e-6)
  # Training with cfg_dropout = 1 drops every row's conditioning (the targets stay the path's).
  always = common.dis(config.tiny(), 4)
  always.scheme_options.cfg_dropout = 1.0
  always_spec = ModelSpec.from_config(always)
  never_spec = ModelSpec.from_config(common.dis(config.tiny(), 4))
  loss, _ = train.supervision_loss(params, rows, always_spec, state, jax.random.key(1))
  expected, _ = train.supervision_loss(params, jnp.zeros_like(rows), never_spec, blank,
                                       jax.random.key(1))
  np.testing.assert_allclose(loss, expected, rtol=1e-6)
  never, _ = train.supervision_loss(params, rows, never_spec, state, jax.random.key(1))
  assert abs(float(never) - float(loss)) > 1e-4
  for bad in (1.5, -0.1, "half"):
    values = always.to_dict()
    values["scheme_options"] = dict(values["scheme_options"], cfg_dropout=bad)
    with pytest.raises(ValueError, match="cfg_dropout"):
      model_lib.scheme_of(values)


def test_pick_rollout_by_hand():
  preds = jnp.array([[[1, 2], [3, 4], [1, 2]],
                     [[5, 5], [6, 6], [7, 7]]])  # [B=2, K=3, L=2]
  q = jnp.array([[0.1, 0.9, 0.2], [0.3, -1.0, 0.5]])
  steps = jnp.array([[3, 2, 2], [4, 1, 4]])
  np.testing.assert_array_equal(inference.pick_rollout(preds, q, steps, "q"), [1, 2])
  np.testing.assert_array_equal(inference.pick_rollout(preds, q, steps, "vote"), [0, 0])
  np.testing.assert_array_equal(inference.pick_rollout(preds, q, steps, "first_halt"), [1, 1])


def test_rollouts_count_every_pass_and_noise_makes_them_differ():
  cfg, spec, params = _model()
  batch = _batch(spec, 4, 6)
  plain = inference.eval_batch(params, batch, spec=spec)
  same = inference.eval_batch(params, batch, spec=spec,
                              strategy=inference.Strategy(rollouts=3, pick="vote"))
  np.testing.assert_array_equal(same["preds"], plain["preds"])  # noise 0: identical rollouts
  np.testing.assert_array_equal(same["cost_steps"], 3 * plain["steps"])
  params["q_head"]["bias"] = jnp.array([-2.0, 0.0])
  noisy = inference.Strategy(rollouts=4, noise=0.5, pick="first_halt", halt="q", seed=3)
  noisy.validate(spec)
  out = inference.eval_batch(params, batch, spec=spec, strategy=noisy)
  # First to halt: all K rollouts stop with the first, so the cost is K x its steps.
  np.testing.assert_array_equal(out["cost_steps"], 4 * out["steps"])
  again = inference.eval_batch(params, batch, spec=spec, strategy=noisy)
  np.testing.assert_array_equal(out["preds"], again["preds"])  # seeded
  voted = inference.eval_batch(params, batch, spec=spec, strategy=inference.Strategy(
      rollouts=4, noise=0.5, pick="vote", seed=3))
  assert (np.asarray(voted["preds"]) != np.asarray(plain["preds"])).any()
  with pytest.raises(ValueError, match="first_halt"):
    inference.Strategy(rollouts=2, pick="first_halt").validate(spec)
  with pytest.raises(ValueError, match="needs a trained halting head"):
    inference.Strategy(rollouts=2, pick="q").validate(
        ModelSpec.from_config(common.dis(config.tiny(), 4)))


def test_noisy_guided_rollouts_are_seeded_and_the_old_adaptive_flag_is_refused():
  cfg, spec, params = _model()
  batch = _batch(spec, 3, 7)
  a = inference.eval_batch(params, batch, spec=spec, strategy=inference.Strategy(
      rollouts=2, noise=0.3, pick="q", guidance_w=2.0, seed=1))
  b = inference.eval_batch(params, batch, spec=spec, strategy=inference.Strategy(
      rollouts=2, noise=0.3, pick="q", guidance_w=2.0, seed=1))
  np.testing.assert_array_equal(a["preds"], b["preds"])
  with pytest.raises(ValueError, match="eval.halt"):
    inference.Strategy.from_config(common.eval_recipe(adaptive_halt=True))
