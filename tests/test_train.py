import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import trm_jax
from trm_jax import act, config, main, optim, train
from trm_jax.config import ModelSpec

from conftest import random_batch as _batch


def test_adam_atan2_matches_hand_computation():
  lr, wd, b1, b2 = 0.1, 0.5, 0.9, 0.95
  opt = optim.adam_atan2(lr, b1, b2, wd)
  params = {"w": jnp.array([1.0, -2.0])}
  grads = {"w": jnp.array([0.5, -0.1])}
  state = opt.init(params)
  expected = [1.0, -2.0]
  m = [0.0, 0.0]
  v = [0.0, 0.0]
  for t in (1, 2):
    updates, state = opt.update(grads, state, params)
    params = jax.tree.map(lambda p, u: p + u, params, updates)
    for i, g in enumerate([0.5, -0.1]):
      m[i] = b1 * m[i] + (1 - b1) * g
      v[i] = b2 * v[i] + (1 - b2) * g * g
      step = lr / (1 - b1**t)
      expected[i] = expected[i] * (1 - lr * wd) - step * math.atan2(m[i], math.sqrt(v[i] / (1 - b2**t)))
  np.testing.assert_allclose(params["w"], expected, rtol=1e-6)


def test_adam_atan2_first_step_literal():
  opt = optim.adam_atan2(0.1, 0.9, 0.95, 0.5)
  params = jnp.array([1.0, -2.0])
  updates, _ = opt.update(jnp.array([0.5, -0.1]), opt.init(params), params)
  np.testing.assert_allclose(params + updates, [0.95 - math.atan(0.1), -1.9 + math.atan(0.1)],
                             rtol=1e-6)


def test_sparse_sign_sgd_touches_only_batch_rows_and_sums_duplicates():
  table = jnp.arange(10.0).reshape(5, 2)
  ids = jnp.array([1, 3, 1])
  grads = jnp.array([[1.0, -2.0], [0.5, 0.0], [-3.0, 1.0]])
  new = optim.sparse_sign_sgd(table, ids, grads, lr=0.1, weight_decay=0.5)
  for row in (0, 2, 4):
    np.testing.assert_array_equal(new[row], table[row])
  # id 1: summed grad [-2, -1] -> sign [-1, -1]; id 3: [0.5, 0] -> sign [1, 0].
  np.testing.assert_allclose(new[1], np.array([2.0, 3.0]) * 0.95 + 0.1, rtol=1e-6)
  np.testing.assert_allclose(new[3], np.array([6.0, 7.0]) * 0.95 - np.array([0.1, 0.0]), rtol=1e-6)


def test_ema_math():
  ema = optim.ema_update({"a": jnp.array(1.0)}, {"a": jnp.array(3.0)}, 0.9)
  np.testing.assert_allclose(ema["a"], 0.9 * 1.0 + 0.1 * 3.0)


def test_warmup_cosine_schedule():
  s = optim.warmup_cosine(1.0, warmup_steps=10, total_steps=110, min_ratio=0.1)
  np.testing.assert_allclose([s(0), s(5), s(10), s(60), s(110)],
                             [0.0, 0.5, 1.0, 0.1 + 0.9 * 0.5, 0.1], atol=1e-6)
  constant = optim.warmup_cosine(2.0, 4, 100, min_ratio=1.0)
  np.testing.assert_allclose([constant(1), constant(50), constant(100)], [0.5, 2.0, 2.0])


def test_carry_replacement_keeps_running_rows():
  cfg = config.tiny()
  spec = ModelSpec.from_config(cfg)
  first, second = _batch(spec, 4, 0), _batch(spec, 4, 1)
  state = act.initial_state(cfg, first)
  state = dict(state, halted=jnp.array([False, True, False, True]),
               data=first, carry=dict(state["carry"], y=jnp.ones_like(state["carry"]["y"]),
                                      steps=jnp.array([3, 5, 1, 2], jnp.int32)))
  new = act.refresh(spec, state, second)
  for row, halted in enumerate([False, True, False, True]):
    source = second if halted else first
    for key in first:
      np.testing.assert_array_equal(new["data"][key][row], source[key][row])
  np.testing.assert_array_equal(new["carry"]["reset"], [False, True, False, True])
  np.testing.assert_array_equal(new["carry"]["steps"], [3, 0, 1, 0])
  np.testing.assert_array_equal(new["carry"]["y"], state["carry"]["y"])  # reset happens in forward


def test_exploration_is_per_sample():
  cfg = config.tiny()
  cfg.halt_max_steps = 16
  cfg.halt_exploration_prob = 0.5
  spec = ModelSpec.from_config(cfg)
  params = trm_jax.init_params(cfg, jax.random.key(0))
  params["q_head"]["bias"] = jnp.array([5.0, -5.0])  # the Q head says "halt" for every row
  batch = _batch(spec, 256, 0)
  state = act.refresh(spec, act.initial_state(cfg, batch), batch)
  rows = trm_jax.model.puzzle_rows(params, batch["puzzle_identifiers"])
  new, _ = act.advance(params, rows, spec, state, jax.random.key(1), training=True)
  halted = np.asarray(new["halted"])
  # Rows that explore draw a minimum of >= 2 steps and cannot halt at step 1; the rest halt.
  assert 0.35 < halted.mean() < 0.65
  evaluated, _ = act.advance(params, rows, spec, state, training=False)
  assert not np.asarray(evaluated["halted"]).any()  # eval never halts early by default


def _train_cfg(**overrides):
  values = dict(global_batch_size=16, epochs=1, eval_interval=1, lr=3e-3, lr_min_ratio=1.0,
                lr_warmup_steps=2, beta1=0.9, beta2=0.95, weight_decay=0.1, puzzle_emb_lr=1e-2,
                puzzle_emb_weight_decay=0.1, grad_clip_norm=0.0, ema=True, ema_rate=0.9, seed=0,
                log_every_steps=1)
  values.update(overrides)
  return ml_collections.ConfigDict(values)


def test_training_reduces_the_loss_and_updates_only_seen_puzzle_rows():
  cfg = config.tiny()
  spec = ModelSpec.from_config(cfg)
  tcfg = _train_cfg()
  batch = _batch(spec, 16, 0)
  batch["puzzle_identifiers"] = jnp.asarray(np.arange(16) % 3, jnp.int32)  # rows 3.. unseen
  state = train.init_state(cfg, tcfg, batch, 40, jax.random.key(0))
  step = jax.jit(functools.partial(train.train_step, spec=spec, train_cfg=tcfg, total_steps=40),
                 donate_argnums=0)
  losses = []
  for _ in range(40):
    state, metrics = step(state, batch)
    losses.append(float(metrics["lm_loss"]))
  assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
  table = np.asarray(state["puzzle_emb"])
  assert np.abs(table[:3]).max() > 0 and np.abs(table[3:]).max() == 0
  assert int(state["step"]) == 40
  # The EMA lags the weights and is what evaluation uses.
  ema_leaf = jax.tree.leaves(state["ema"])[0]
  assert not np.allclose(ema_leaf, jax.tree.leaves(state["trainable"])[0])
  np.testing.assert_array_equal(jax.tree.leaves(train.eval_params(state)["net"])[0],
                                jax.tree.leaves(state["ema"]["net"])[0])


@pytest.mark.parametrize("section,field,value", [
    ("train", "lr", -1.0), ("train", "global_batch_size", 0), ("train", "beta2", 1.5),
    ("eval", "global_batch_size", 0), ("model", "pos_encodings", "alibi"),
])
def test_invalid_config_fails_before_compiling_naming_the_field(tmp_path, section, field, value,
                                                                monkeypatch):
  import importlib.util, pathlib  # noqa: E401
  path = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "sudoku.py"
  spec = importlib.util.spec_from_file_location("sudoku_cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config("smoke")
  cfg[section][field] = value
  compiled = []
  monkeypatch.setattr(jax, "jit", lambda *a, **k: compiled.append(1))
  monkeypatch.setattr("trm_jax.data.datasets.prepare",
                      lambda *a, **k: pytest.fail("validation must come before data and compile"))
  with pytest.raises(ValueError, match=f"'{field}'|'{section}.{field}'"):
    main.run(cfg, str(tmp_path))
  assert not compiled
