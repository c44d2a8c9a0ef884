"""Policy-improvement analysis (trm_jax/readouts.py, trm_jax/significance.py) and its command
(trm_jax/analyze.py)."""

import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trm_jax
from trm_jax import act, config, main, readouts, significance
from trm_jax import model as model_lib
from trm_jax.config import ModelSpec

from experiments import common
from tests.test_main import small_smoke_config


def test_margin_matches_a_hand_computation():
  l_u = jnp.array([[0.0, 0.0, 0.0]])
  l_c = jnp.array([[1.0, 0.0, -1.0]])
  e = math.e
  expected_dl_mean = (e - 1 / e) / (e + 1 + 1 / e)  # E_{softmax(l_c)}[dl], dl = (1, 0, -1)
  for label, dl_star in ((0, 1.0), (1, 0.0), (2, -1.0)):
    margin = readouts.advantage_margin(l_u, l_c, jnp.array([label]))
    np.testing.assert_allclose(margin, [dl_star - expected_dl_mean], rtol=1e-6)
  # w = 0: the policy is softmax(l_u) = uniform, E[dl] = 0.
  np.testing.assert_allclose(readouts.advantage_margin(l_u, l_c, jnp.array([0]), w=0.0), [1.0],
                             rtol=1e-6)


@pytest.mark.parametrize("w", [0.0, 0.5, 1.0, 2.0])
def test_margin_is_minus_the_derivative_of_the_guided_ce(w):
  """Prop. 4.1: d CE(l_u + w dl, y*) / dw = E_{softmax(l_w)}[dl] - dl(y*) = -margin."""
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  l_u = 3 * jax.random.normal(k1, (64, 7), jnp.float64 if jax.config.x64_enabled else jnp.float32)
  l_c = l_u + 2 * jax.random.normal(k2, l_u.shape, l_u.dtype)
  labels = jax.random.randint(k3, (64,), 0, 7)
  ce = lambda w: -jnp.take_along_axis(jax.nn.log_softmax(l_u + w * (l_c - l_u)),
                                      labels[:, None], -1)[:, 0]
  derivative = jax.vmap(jax.grad(lambda w, i: ce(w)[i]), in_axes=(None, 0))(w, jnp.arange(64))
  margin = readouts.advantage_margin(l_u, l_c, labels, w)
  np.testing.assert_allclose(derivative, -margin, atol=1e-5)
  # The sign predicts the CE change of a small step in w.
  step = 1e-2
  change = ce(w + step) - ce(w)
  clear = jnp.abs(margin) > 1e-2
  assert bool(clear.any())
  np.testing.assert_array_equal(np.sign(change[clear]), -np.sign(margin[clear]))


def test_last_useful_point_and_dead_passes():
  changed = np.array([[1, 1, 0, 1],
                      [0, 1, 0, 0],
                      [1, 0, 0, 0]])  # [P=3, B=4]
  last = readouts.last_useful_point(changed)
  np.testing.assert_array_equal(last, [3, 2, 0, 1])
  sums = {k: np.ones(3) for k in readouts.POINT_SUMS}
  summary = readouts.summarize(sums, last, 4, passes_per_point=3.0, points_per_step=1)
  assert summary["forward_passes_per_example"] == 9.0
  # Dead passes: 9 - 3 * last = (0, 3, 9, 6) -> mean 4.5.
  assert summary["dead_passes_per_example"] == 4.5
  assert summary["dead_fraction"] == 0.5
  assert summary["last_useful_point_histogram"] == [1, 1, 1, 1]
  assert [p["forward_passes"] for p in summary["points"]] == [3.0, 6.0, 9.0]


def _tiny(scheme):
  cfg = config.tiny()
  if scheme == "dis":
    cfg = common.dis(cfg, 4)
  elif scheme == "hrm":
    cfg = common.hrm(cfg, 2)
  elif scheme == "trm_singlez":
    cfg.scheme = "trm_singlez"
  return cfg


def _batch(spec, batch_size, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.integers(1, spec.vocab_size, (batch_size, spec.seq_len))
  labels = (x + 1) % spec.vocab_size
  labels[:, -2:] = -100  # ignored positions take no part
  return {"inputs": jnp.asarray(x, jnp.int32), "labels": jnp.asarray(labels, jnp.int32),
          "puzzle_identifiers": jnp.asarray(rng.integers(0, spec.num_puzzle_identifiers,
                                                         batch_size), jnp.int32)}


def test_paired_exact_test_by_hand():
  # 12 fixed, 5 broken, 3 right in both, 4 wrong in both: n = 17 discordant problems,
  # P(X <= 5 | Bin(17, 1/2)) = (1 + 17 + 136 + 680 + 2380 + 6188) / 2**17 = 9402 / 131072.
  before = np.array([0] * 12 + [1] * 5 + [1] * 3 + [0] * 4)
  after = np.array([1] * 12 + [0] * 5 + [1] * 3 + [0] * 4)
  out = significance.paired_exact_test(before, after)
  assert (out["fixed"], out["broken"], out["problems"]) == (12, 5, 24)
  assert out["p_value"] == pytest.approx(2 * 9402 / 131072, rel=1e-12)
  assert out["difference"] == pytest.approx((15 - 8) / 24)
  # symmetric in direction; an even split and no discordant problem give p = 1
  assert significance.paired_exact_test(after, before)["p_value"] == out["p_value"]
  assert significance.paired_exact_test([0, 1, 1, 0], [1, 0, 1, 0])["p_value"] == 1.0
  assert significance.paired_exact_test([1, 0], [1, 0])["p_value"] == 1.0
  # 10 fixed, none broken: 2 / 2**10
  assert significance.paired_exact_test([0] * 10, [1] * 10)["p_value"] == pytest.approx(2 / 1024)
  with pytest.raises(ValueError, match="equal 1-D shapes"):
    significance.paired_exact_test([0, 1], [0, 1, 1])


@pytest.mark.parametrize("scheme", ["trm", "dis", "hrm", "trm_singlez"])
def test_recorded_readouts_end_with_the_unrecorded_logits(scheme):
  cfg = _tiny(scheme)
  spec = ModelSpec.from_config(cfg)
  params = trm_jax.init_params(cfg, jax.random.key(1))
  batch = _batch(spec, 3)
  state = act.refresh(spec, act.initial_state(spec, batch), batch, jax.random.key(0))
  rows = model_lib.puzzle_rows(params, batch["puzzle_identifiers"])
  for _ in range(2):
    _, plain = model_lib.step(params, rows, spec, state["carry"], state["data"], training=False)
    new, recorded = model_lib.step(params, rows, spec, state["carry"], state["data"],
                                   training=False, record=True)
    # One point per answer-state update: T per step (HRM: each of the H_cycles z_H updates).
    assert recorded.trace.shape == (spec.H_cycles, 3, spec.seq_len, spec.vocab_size)
    np.testing.assert_array_equal(recorded.trace[-1], plain.logits)
    np.testing.assert_array_equal(recorded.logits, plain.logits)
    state = dict(state, carry=new)


@pytest.mark.parametrize("scheme", ["trm", "dis", "hrm", "trm_singlez"])
def test_trajectory_matches_the_public_step_loop(scheme):
  cfg = _tiny(scheme)
  spec = ModelSpec.from_config(cfg)
  params = trm_jax.init_params(cfg, jax.random.key(2))
  params["lm_head"]["kernel"] = 8 * params["lm_head"]["kernel"]
  batch = _batch(spec, 5)
  stats = jax.jit(lambda p, b: readouts.trajectory(p, b, spec=spec))(params, batch)
  U = spec.H_cycles
  assert stats["tokens"].shape == (spec.halt_max_steps * U, 5)
  labels = np.asarray(batch["labels"])
  mask = labels != -100
  carry = trm_jax.initial_carry(cfg, 5)
  for s in range(spec.halt_max_steps):
    carry, logits, _, _ = trm_jax.supervision_step(params, cfg, carry, batch)
    logits = np.asarray(logits, np.float64)
    correct = (logits.argmax(-1) == labels) & mask
    point = (s + 1) * U - 1  # the step's last readout point
    np.testing.assert_array_equal(stats["tokens"][point], mask.sum(-1))
    np.testing.assert_array_equal(stats["correct"][point], correct.sum(-1))
    log_p = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1,
                                                                                keepdims=True)) \
        - logits.max(-1, keepdims=True)
    ce = -np.take_along_axis(log_p, np.where(mask, labels, 0)[..., None], -1)[..., 0]
    np.testing.assert_allclose(stats["ce_labels"][point], (ce * mask).sum(-1), rtol=2e-5)
  if scheme != "dis":  # the step target of TRM-like schemes is the labels
    np.testing.assert_array_equal(stats["ce_target"], stats["ce_labels"])


def test_analyze_command_on_a_tiny_trained_run(tmp_path):
  cfg = small_smoke_config()
  cfg.train.max_steps = 3
  main.run(cfg, str(tmp_path))
  out = tmp_path / "out"
  result = subprocess.run(
      [sys.executable, "-m", "trm_jax.analyze", "--workdir", str(tmp_path), "--out", str(out),
       "--max_examples", "10", "--batch_size", "8", "--guidance_ws", "1,2", "--converge_ks", "1",
       "--rollouts", "2,0.1", "--split", "test"],
      capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "dead passes per example" in result.stdout and "| inference strategy |" in result.stdout
  summary = json.loads((out / "analysis.json").read_text())
  spec = ModelSpec.from_config(trm_jax.load(tmp_path).model_config)
  assert summary["examples"] == 10 and summary["split"] == "test"
  assert len(summary["points"]) == spec.halt_max_steps * spec.H_cycles
  assert summary["forward_passes_per_example"] == spec.halt_max_steps * spec.H_cycles * (
      spec.L_cycles + 1)
  names = [r["strategy"] for r in summary["strategies"]]
  assert "w=2, fixed N_sup" in names and "w=1, Q-head halting, at most N_sup" in names
  scaled = [r for r in summary["strategies"] if r["rollouts"] == 2]
  assert {r["strategy"].rsplit("pick ", 1)[-1] for r in scaled} == {"vote)", "q)", "first_halt)"}
  full_passes = spec.halt_max_steps * spec.H_cycles * (spec.L_cycles + 1)
  assert next(r for r in scaled if "vote" in r["strategy"])["forward_passes_per_example"] == (
      2 * full_passes)
  budgets = [r for r in summary["strategies"] if r["budget_only"]]
  assert [r["max_steps"] for r in budgets] == list(range(1, spec.halt_max_steps + 1))
  passes = spec.H_cycles * (spec.L_cycles + 1)
  assert [r["forward_passes_per_example"] for r in budgets] == [
      k * passes for k in range(1, spec.halt_max_steps + 1)]
  # Plain inference at each budget scores what the recorded trajectory shows at that step.
  for r in budgets:
    point = summary["points"][r["max_steps"] * spec.H_cycles - 1]
    assert r["exact_accuracy"] == pytest.approx(point["exact_accuracy"])
    assert r["token_accuracy"] == pytest.approx(point["token_accuracy"])
  import matplotlib.image
  for name in ("trajectory.png", "last_useful.png", "frontier.png"):
    image = matplotlib.image.imread(out / name)
    assert image.ndim == 3 and image.shape[0] > 200 and image.std() > 0
  assert (out / "analysis.txt").read_text().startswith("trm step 3, test")
  # By default it reads the validation split the run holds out (choices belong there).
  result = subprocess.run(
      [sys.executable, "-m", "trm_jax.analyze", "--workdir", str(tmp_path), "--out", str(out),
       "--max_examples", "4", "--guidance_ws", "1", "--converge_ks", "1"],
      capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads((out / "analysis.json").read_text())["split"] == "validation"
