"""Matmul FLOP counting, checked against hand counts and TRM's closed-form FLOPs."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from trm_jax import config, flops, inference, train
from trm_jax.config import ModelSpec
from trm_jax.kernels import execution
from trm_jax.nn import swiglu_width


@pytest.fixture(autouse=True)
def _xla_dots():
  """Counted on XLA's dot: a CPU kernel's custom call holds no dot_general."""
  with execution.using(execution.Settings(matmul="xla", attention="xla")):
    yield


def _abstract(*shapes):
  return [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]


def test_plain_and_batched_matmuls():
  assert flops.matmul_flops(jnp.matmul, *_abstract((3, 5), (5, 7))) == 2 * 3 * 5 * 7
  bmm = lambda a, b: jnp.einsum("bij,bjk->bik", a, b)
  assert flops.matmul_flops(bmm, *_abstract((2, 3, 4), (2, 4, 5))) == 2 * 2 * 3 * 4 * 5
  # Contracting two axes at once: [2,3,4] . [3,4,6] -> [2,6].
  two_axes = lambda a, b: jnp.tensordot(a, b, axes=2)
  assert flops.matmul_flops(two_axes, *_abstract((2, 3, 4), (3, 4, 6))) == 2 * 2 * 3 * 4 * 6


def test_loops_multiply_their_body_and_cond_takes_the_costlier_branch():
  step = lambda h, w: jnp.tanh(h @ w)
  per_step = 2 * 3 * 6 * 6
  scanned = lambda h, w: jax.lax.scan(lambda c, _: (step(c, w), None), h, None, length=4)[0]
  looped = lambda h, w: jax.lax.fori_loop(0, 5, lambda _, c: step(c, w), h)
  nested = lambda h, w: jax.lax.scan(lambda c, _: (looped(c, w), None), h, None, length=2)[0]
  args = _abstract((3, 6), (6, 6))
  assert flops.matmul_flops(scanned, *args) == 4 * per_step
  assert flops.matmul_flops(looped, *args) == 5 * per_step
  assert flops.matmul_flops(nested, *args) == 10 * per_step
  branchy = lambda p, h, w: jax.lax.cond(p, lambda: h @ w @ w, lambda: h @ w)
  assert flops.matmul_flops(branchy, jax.ShapeDtypeStruct((), bool), *args) == 2 * per_step
  jitted = jax.jit(lambda h, w: h @ w)
  assert flops.matmul_flops(lambda h, w: jitted(h, w) + jitted(h, w), *args) == 2 * per_step


def test_gradients_count_their_backward_matmuls():
  # d/dw sum((x @ w) @ v): forward x@w and h@v; backward g@v^T and x^T@dh (no dx, no dv).
  loss = lambda w, x, v: jnp.sum((x @ w) @ v)
  x, w, v = _abstract((2, 3), (3, 4), (4, 5))
  expected = 2 * (2 * 2 * 3 * 4) + 2 * (2 * 2 * 4 * 5)  # each dot once forward, once backward
  assert flops.matmul_flops(jax.grad(loss), w, x, v) == expected


def test_while_loops_with_matmuls_are_refused():
  looped = lambda h, w: jax.lax.while_loop(lambda c: c.sum() < 1, lambda c: c @ w, h)
  with pytest.raises(ValueError, match="static trip count"):
    flops.matmul_flops(looped, *_abstract((3, 6), (6, 6)))
  no_matmul = lambda h: jax.lax.while_loop(lambda c: c.sum() < 1, lambda c: c + 1, h)
  assert flops.matmul_flops(no_matmul, *_abstract((3,))) == 0


# --------------------------------------------------------------------------------------------
# TRM in closed form: one net call is num_layers blocks of (token mixer + SwiGLU); the heads
# are the LM head over the seq_len answer positions and the 2-way Q head on position 0.

def _net_flops(spec: ModelSpec) -> int:
  S, D = spec.total_len, spec.hidden_size
  inter = swiglu_width(D, spec.expansion)
  channel = 2 * S * D * (2 * inter) + 2 * S * inter * D
  if spec.mlp_t:
    inter_t = swiglu_width(S, spec.expansion)
    mixer = 2 * D * S * (2 * inter_t) + 2 * D * inter_t * S
  else:
    mixer = 2 * S * D * (3 * D) + 2 * S * D * D + 2 * (2 * S * S * D)  # qkv, out, QK^T, AV
  return spec.num_layers * (mixer + channel)


def _head_flops(spec: ModelSpec) -> int:
  return 2 * spec.seq_len * spec.hidden_size * spec.vocab_size + 2 * spec.hidden_size * 2


def _batch(spec: ModelSpec, batch_size: int) -> dict:
  ints = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
  return {"inputs": ints(batch_size, spec.seq_len), "labels": ints(batch_size, spec.seq_len),
          "puzzle_identifiers": ints(batch_size)}


@pytest.mark.parametrize("mlp_t", [False, True])
def test_trm_eval_and_train_step_flops_match_the_closed_form(mlp_t):
  cfg = config.tiny(mlp_t=mlp_t)
  spec = ModelSpec.from_config(cfg)
  B, H, L = 3, spec.H_cycles, spec.L_cycles
  net, heads = _net_flops(spec), _head_flops(spec)
  batch = _batch(spec, B)

  params = jax.eval_shape(functools.partial(train.model_lib.init_params, cfg), jax.random.key(0))
  evaluate = functools.partial(inference.eval_batch, spec=spec)
  assert flops.matmul_flops(evaluate, params, batch) == (
      B * spec.halt_max_steps * (H * (L + 1) * net + heads))

  train_cfg = ml_collections.ConfigDict(dict(
      lr=1e-3, lr_min_ratio=1.0, lr_warmup_steps=1, beta1=0.9, beta2=0.95, weight_decay=0.1,
      puzzle_emb_lr=1e-2, puzzle_emb_weight_decay=0.1, grad_clip_norm=0.0, ema=True,
      ema_rate=0.999))
  state = jax.eval_shape(
      lambda: train.init_state(cfg, train_cfg, batch, 10, jax.random.key(0)))
  step = functools.partial(train.train_step, spec=spec, train_cfg=train_cfg, total_steps=10)
  # H-1 cycles forward only; the last cycle and the heads forward plus two backward matmuls
  # (input and weight gradients) per forward matmul; the sparse puzzle-table update sums the
  # row gradients of equal ids with one [B, B] @ [B, P] matmul.
  assert flops.matmul_flops(step, state, batch) == (
      B * ((H - 1) * (L + 1) * net + 3 * ((L + 1) * net + heads))
      + 2 * B * B * spec.puzzle_emb_ndim)
  # model_flops counts the model's FLOPs whatever the spec's remat and the execution settings:
  # full remat recomputes the forward in the backward pass, which matmul_flops would see and
  # MFU must not.
  rematted = dataclasses.replace(spec, remat="full")
  train_step = functools.partial(train.train_step, train_cfg=train_cfg, total_steps=10)
  with execution.using(execution.Settings(matmul="auto", attention="auto")):
    model = flops.model_flops(rematted, train_step, state, batch)
  assert model == flops.matmul_flops(step, state, batch)
  assert flops.matmul_flops(functools.partial(train_step, spec=rematted), state, batch) > (
      flops.matmul_flops(step, state, batch))


@pytest.mark.parametrize("kind, dtype, override, expected", [
    ("NVIDIA H100 80GB HBM3", "bfloat16", None, 989.4),
    ("NVIDIA H100 PCIe", "bfloat16", None, 756.0),  # the PCIe card is matched before "H100"
    ("NVIDIA H200", "float16", None, 989.4),
    ("TPU v5 lite", "bfloat16", None, 197.0),
    ("TPU v5p", "bfloat16", None, 459.0),
    ("NVIDIA H100 80GB HBM3", "float32", None, None),  # no fp32 matrix peak in the table
    ("cpu", "bfloat16", None, None),
    ("cpu", "bfloat16", 3.5, 3.5),
])
def test_peak_tflops(kind, dtype, override, expected):
  assert flops.peak_tflops(kind, dtype, override) == expected
