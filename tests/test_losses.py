import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trm_jax import losses

IGN = losses.IGNORE_LABEL_ID


def test_stablemax_hand_values():
  # s([0, 1, -1]) = [1, 2, 1/2]; sum 3.5.
  logits = jnp.array([[0.0, 1.0, -1.0]] * 3)
  np.testing.assert_allclose(losses.stablemax(logits[0]), [1.0, 2.0, 0.5])
  ce = losses.stablemax_cross_entropy(logits, jnp.array([1, 2, IGN]), jnp.array([True, True, False]))
  np.testing.assert_allclose(ce, [math.log(1.75), math.log(7.0), 0.0], rtol=1e-6)


def test_stablemax_gradient_is_finite_where_the_other_branch_blows_up():
  # At x = 1 the unused branch 1/(1-x) is infinite; its gradient must not leak as NaN.
  grad = jax.grad(lambda x: losses.log_stablemax(x)[0])(jnp.array([1.0, 0.0, -2.0]))
  chex.assert_tree_all_finite(grad)
  # d/dx0 [log(x0+1) - log(sum s)] at x0 = 1: 1/2 - 1/(2 + 1 + 1/3)
  np.testing.assert_allclose(grad[0], 0.5 - 1 / (10 / 3), rtol=1e-6)


def test_softmax_cross_entropy_hand_value():
  ce = losses.softmax_cross_entropy(jnp.array([[0.0, 1.0, -1.0]]), jnp.array([0]),
                                    jnp.array([True]))
  np.testing.assert_allclose(ce, [math.log(1 + math.e + math.exp(-1))], rtol=1e-6)


def _example():
  # Row 0 predicts its labels exactly; row 1 is wrong at its first position.
  logits = jnp.array([
      [[0.0, 3.0, 0.0], [0.0, 0.0, 2.0], [5.0, 0.0, 0.0]],
      [[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [1.0, 0.0, -1.0]],
  ])
  labels = jnp.array([[1, 2, IGN], [0, 0, 0]])
  return logits, labels


def _stablemax_ce_numpy(logits, labels):
  s = np.where(logits < 0, 1 / (1 - np.minimum(logits, 0)), logits + 1)
  p = s / s.sum(-1, keepdims=True)
  out = np.zeros(labels.shape)
  for idx in np.ndindex(labels.shape):
    if labels[idx] != IGN:
      out[idx] = -np.log(p[idx + (labels[idx],)])
  return out


@pytest.mark.parametrize("loss_type", ["stablemax", "softmax"])
def test_act_loss_and_metrics(loss_type):
  logits, labels = _example()
  q_halt = jnp.array([0.0, 2.0])
  q_continue = jnp.zeros(2)
  total, m = losses.act_loss(logits, q_halt, q_continue, labels, halted=jnp.array([True, False]),
                             steps=jnp.array([3, 5]), loss_type=loss_type)
  if loss_type == "stablemax":
    ce = _stablemax_ce_numpy(np.asarray(logits), np.asarray(labels))
  else:
    logp = jax.nn.log_softmax(np.asarray(logits, np.float64), axis=-1)
    ce = -np.take_along_axis(logp, np.maximum(np.asarray(labels), 0)[..., None], -1)[..., 0]
    ce = np.where(np.asarray(labels) == IGN, 0, ce)
  lm = ce[0].sum() / 2 + ce[1].sum() / 3
  q_halt_bce = math.log(2) + math.log(1 + math.exp(2))  # targets: row 0 correct, row 1 not
  np.testing.assert_allclose(m["lm_loss"], lm, rtol=1e-5)
  np.testing.assert_allclose(m["q_halt_loss"], q_halt_bce, rtol=1e-5)
  np.testing.assert_allclose(total, lm + 0.5 * q_halt_bce, rtol=1e-5)
  # Metrics cover only the halted row 0.
  assert float(m["count"]) == 1 and float(m["exact_accuracy"]) == 1
  assert float(m["accuracy"]) == 1 and float(m["q_halt_accuracy"]) == 1
  assert float(m["steps"]) == 3
  assert "q_continue_loss" not in m


def test_act_loss_with_continue_target():
  logits, labels = _example()
  total_without, _ = losses.act_loss(logits, jnp.zeros(2), jnp.zeros(2), labels,
                                     jnp.ones(2, bool), jnp.ones(2, jnp.int32))
  total, m = losses.act_loss(logits, jnp.zeros(2), jnp.zeros(2), labels, jnp.ones(2, bool),
                             jnp.ones(2, jnp.int32), target_q_continue=jnp.array([0.5, 0.5]))
  np.testing.assert_allclose(m["q_continue_loss"], 2 * math.log(2), rtol=1e-6)
  np.testing.assert_allclose(total - total_without, math.log(2), rtol=1e-5)


def test_no_supervised_tokens_is_not_nan():
  logits = jnp.zeros((1, 2, 3))
  labels = jnp.full((1, 2), IGN)
  total, m = losses.act_loss(logits, jnp.zeros(1), jnp.zeros(1), labels, jnp.ones(1, bool),
                             jnp.ones(1, jnp.int32))
  chex.assert_tree_all_finite((total, m))
  assert float(m["count"]) == 0
