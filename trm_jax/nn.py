"""The TRM network as Flax NNX modules: embeddings, the shared 2-block net `f`, and the heads.

Semantics follow the official PyTorch code (see BUILD_NOTES.md): post-norm blocks, RMSNorm
without scale computed in fp32, SwiGLU with the official width rounding, RoPE applied in fp32,
parameters kept in `param_dtype` and cast to the activation dtype at every use.

The matmul and attention kernels are execution settings, read at trace time
(`execution.current()`), not attributes of the modules: the same model runs on any of them.

Variable kinds (they decide what each optimiser touches):
  nnx.Param    - dense weights, trained by AdamATan2;
  PuzzleTable  - the per-puzzle embedding table, trained by sparse sign-SGD;
  Constant     - the fixed initial latents, never trained.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from trm_jax.kernels import attention as kernels_attention
from trm_jax.kernels import execution
from trm_jax.kernels import matmul as kernels_matmul
from trm_jax.config import ModelSpec

LEARNED_POS_SCALE = 0.707106781  # 1/sqrt(2), the official constant.


class PuzzleTable(nnx.Variable):
  """Per-puzzle embedding rows; updated sparsely, never by the dense optimiser."""


class Constant(nnx.Variable):
  """A fixed tensor stored with the parameters (e.g. the initial latents)."""


def truncated_lecun_std_correction(lower: float = -2.0, upper: float = 2.0) -> float:
  """Std of a unit normal truncated to [lower, upper]; dividing by it restores the std."""
  phi = lambda t: math.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)
  mass = 0.5 * (math.erf(upper / math.sqrt(2)) - math.erf(lower / math.sqrt(2)))
  mean_term = (phi(lower) - phi(upper)) / mass
  var = 1 + (lower * phi(lower) - upper * phi(upper)) / mass - mean_term**2
  return math.sqrt(var)


def trunc_normal(key: jax.Array, shape, std: float, dtype=jnp.float32) -> jax.Array:
  """Truncated normal at +-2 sigma whose actual std is `std` (the official init)."""
  if std == 0:
    return jnp.zeros(shape, dtype)
  unit = jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32)
  return (unit * (std / truncated_lecun_std_correction())).astype(dtype)


def rms_norm(x: jax.Array, eps: float, axis: int = -1) -> jax.Array:
  """RMSNorm without a learned scale, computed in fp32 and cast back.

  For the backward pass it keeps x as it came (bf16 in training) and the fp32 inverse RMS, and
  recomputes the fp32 copy of x: plain autodiff keeps two fp32 copies of x per norm (x and 2x,
  for the square), 22 of the 90 GiB that the DIS ARC-medium step at batch 512 keeps for its
  backward (benchmarks/step_anatomy.py). The forward is bitwise unchanged; the backward
  computes the same expressions in other fusions (its fp32 sums may round differently).
  """
  return jax.checkpoint(functools.partial(_rms_norm, eps=eps, axis=axis),
                        policy=_KEEP_INV_RMS)(x)


_KEEP_INV_RMS = jax.checkpoint_policies.save_only_these_names("rms_norm_inv_rms")


def _rms_norm(x: jax.Array, eps: float, axis: int) -> jax.Array:
  x32 = x.astype(jnp.float32)
  inv_rms = jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=axis, keepdims=True) + eps)
  return (x32 * checkpoint_name(inv_rms, "rms_norm_inv_rms")).astype(x.dtype)


def swiglu_width(hidden: int, expansion: float) -> int:
  """Official rounding: round(expansion * hidden * 2/3) up to a multiple of 256."""
  inter = round(expansion * hidden * 2 / 3)
  return -(inter // -256) * 256


def rope_tables(spec: ModelSpec) -> tuple[jax.Array, jax.Array]:
  """RoPE cos/sin, [total_len, head_dim] in fp32 (rotate-half layout), as trace-time constants."""
  head_dim = spec.hidden_size // spec.num_heads
  inv_freq = 1.0 / (spec.rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
  freqs = np.outer(np.arange(spec.total_len, dtype=np.float32), inv_freq)
  angles = np.concatenate([freqs, freqs], axis=-1)
  return jnp.asarray(np.cos(angles)), jnp.asarray(np.sin(angles))


def apply_rope(x_BSNH: jax.Array, cos_SH: jax.Array, sin_SH: jax.Array) -> jax.Array:
  x = x_BSNH.astype(jnp.float32)
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  out = x * cos_SH[None, :, None, :] + rotated * sin_SH[None, :, None, :]
  return out.astype(x_BSNH.dtype)


class Linear(nnx.Module):
  """Bias-free (by default) linear layer with truncated-LeCun init, cast to the input dtype."""

  def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs,
               param_dtype=jnp.float32, bias: bool = False):
    self.kernel = nnx.Param(trunc_normal(rngs.params(), (in_features, out_features),
                                         1.0 / math.sqrt(in_features), param_dtype))
    self.bias = nnx.Param(jnp.zeros((out_features,), param_dtype)) if bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = kernels_matmul.matmul(x, self.kernel[...].astype(x.dtype), execution.current().matmul)
    if self.bias is not None:
      y = y + jnp.expand_dims(self.bias[...].astype(x.dtype), range(y.ndim - 1))
    return y


class SwiGLU(nnx.Module):
  """down(silu(gate) * up) with a fused gate/up projection."""

  def __init__(self, hidden: int, expansion: float, *, rngs: nnx.Rngs, param_dtype):
    inter = swiglu_width(hidden, expansion)
    self.gate_up = Linear(hidden, 2 * inter, rngs=rngs, param_dtype=param_dtype)
    self.down = Linear(inter, hidden, rngs=rngs, param_dtype=param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    gate_up = self.gate_up.kernel[...].astype(x.dtype)
    return self.down(kernels_matmul.swiglu(x, gate_up, execution.current().matmul))


def dot_product_attention(q_BTNH: jax.Array, k_BSNH: jax.Array, v_BSNH: jax.Array,
                          causal: bool = False) -> jax.Array:
  """softmax(q k^T / sqrt(H)) v per head, [B, T, N, H] in and out, causal on request, by the
  current `execution.attention` (trm_jax/kernels/attention.py)."""
  return kernels_attention.attention(q_BTNH, k_BSNH, v_BSNH, execution.current().attention,
                                     causal)


class Attention(nnx.Module):
  """Multi-head self-attention with a fused qkv projection; `causal` for a language model."""

  def __init__(self, hidden: int, num_heads: int, *, rngs: nnx.Rngs, param_dtype,
               causal: bool = False):
    self.num_heads = num_heads
    self.causal = causal
    self.qkv = Linear(hidden, 3 * hidden, rngs=rngs, param_dtype=param_dtype)
    self.out = Linear(hidden, hidden, rngs=rngs, param_dtype=param_dtype)

  def __call__(self, h_BSD: jax.Array, rope: tuple[jax.Array, jax.Array] | None) -> jax.Array:
    B, S, D = h_BSD.shape
    qkv = self.qkv(h_BSD).reshape(B, S, 3 * self.num_heads, D // self.num_heads)
    q, k, v = jnp.split(qkv, 3, axis=2)
    if rope is not None:
      q, k = apply_rope(q, *rope), apply_rope(k, *rope)
    attended = dot_product_attention(q, k, v, self.causal)
    return self.out(attended.reshape(B, S, D))


class Block(nnx.Module):
  """Post-norm block: token mixing (attention, or mlp_t across positions), then SwiGLU.
  `causal`: causal attention (mlp_t mixes every position, so it cannot be causal)."""

  def __init__(self, spec: ModelSpec, *, rngs: nnx.Rngs, causal: bool = False):
    pdt = spec.jnp_param_dtype
    self.eps = spec.rms_norm_eps
    self.mlp_t = spec.mlp_t
    if spec.mlp_t and causal:
      raise ValueError("model config field 'mlp_t' = True: a causal block needs attention")
    if spec.mlp_t:
      self.mixer = SwiGLU(spec.total_len, spec.expansion, rngs=rngs, param_dtype=pdt)
    else:
      self.mixer = Attention(spec.hidden_size, spec.num_heads, rngs=rngs, param_dtype=pdt,
                             causal=causal)
    self.mlp = SwiGLU(spec.hidden_size, spec.expansion, rngs=rngs, param_dtype=pdt)

  def __call__(self, h_BSD: jax.Array, rope) -> jax.Array:
    if self.mlp_t:
      # The official code normalises the transposed [B, D, S] sum over S; the same norm taken
      # over axis 1 of [B, S, D] saves XLA:CPU a minor-axis reduction of length S (~20%).
      mixed_BSD = jnp.swapaxes(self.mixer(jnp.swapaxes(h_BSD, 1, 2)), 1, 2)
      h_BSD = rms_norm(h_BSD + mixed_BSD, self.eps, axis=1)
    else:
      h_BSD = rms_norm(h_BSD + self.mixer(h_BSD, rope), self.eps)
    return rms_norm(h_BSD + self.mlp(h_BSD), self.eps)


class ReasoningNet(nnx.Module):
  """The one shared network f(h, injection) = blocks(h + injection)."""

  def __init__(self, spec: ModelSpec, *, rngs: nnx.Rngs):
    self.layers = nnx.List([Block(spec, rngs=rngs) for _ in range(spec.num_layers)])
    self.use_rope = spec.pos_encodings == "rope" and not spec.mlp_t
    self.spec = spec

  def __call__(self, h_BSD: jax.Array, injection_BSD: jax.Array) -> jax.Array:
    rope = rope_tables(self.spec) if self.use_rope else None
    h_BSD = h_BSD + injection_BSD
    for layer in self.layers:
      h_BSD = layer(h_BSD, rope)
    return h_BSD


class TinyRecursiveModel(nnx.Module):
  """Input embedding, the reasoning net, output heads and the fixed initial latents."""

  def __init__(self, spec: ModelSpec, *, rngs: nnx.Rngs):
    pdt = spec.jnp_param_dtype
    D = spec.hidden_size
    self.spec = spec
    self.embed_tokens = nnx.Param(trunc_normal(rngs.params(), (spec.vocab_size, D), D**-0.5, pdt))
    if spec.pos_encodings == "learned":
      self.embed_pos = nnx.Param(trunc_normal(rngs.params(), (spec.total_len, D), D**-0.5, pdt))
    if spec.puzzle_emb_ndim > 0:
      self.puzzle_emb = PuzzleTable(
          jnp.zeros((spec.num_puzzle_identifiers, spec.puzzle_emb_ndim), pdt))
    self.net = ReasoningNet(spec, rngs=rngs)
    self.lm_head = Linear(D, spec.vocab_size, rngs=rngs, param_dtype=pdt)
    self.q_head = Linear(D, 2, rngs=rngs, param_dtype=pdt, bias=True)
    self.q_head.kernel[...] = jnp.zeros_like(self.q_head.kernel[...])
    self.q_head.bias[...] = jnp.full_like(self.q_head.bias[...], -5.0)
    self.y_init = Constant(trunc_normal(rngs.params(), (D,), 1.0, pdt))
    self.z_init = Constant(trunc_normal(rngs.params(), (D,), 1.0, pdt))

  def embed(self, inputs_BL: jax.Array, puzzle_rows_BP: jax.Array | None,
            cond_BD: jax.Array | None = None) -> jax.Array:
    """x = sqrt(D) * ([puzzle prefix ; token embeddings] + cond) (+ learned positions), compute
    dtype.

    `puzzle_rows_BP` are the rows of the puzzle table for this batch, passed in rather than
    gathered here so that training can differentiate with respect to the rows alone. `cond_BD`
    (a scheme's per-row conditioning, e.g. DIS's timestep embedding) is added to every position,
    the prefix included, before the positions and the scale.
    """
    spec = self.spec
    cdt = spec.jnp_compute_dtype
    B = inputs_BL.shape[0]
    x = jnp.take(self.embed_tokens[...].astype(cdt), inputs_BL.astype(jnp.int32), axis=0)
    prefix = jnp.zeros((B, spec.prefix_len * spec.hidden_size), cdt)
    if puzzle_rows_BP is not None:
      prefix = prefix.at[:, :spec.puzzle_emb_ndim].set(puzzle_rows_BP.astype(cdt))
    x = jnp.concatenate([prefix.reshape(B, spec.prefix_len, spec.hidden_size), x], axis=1)
    if cond_BD is not None:
      x = x + cond_BD.astype(cdt)[:, None, :]
    if spec.pos_encodings == "learned":
      x = LEARNED_POS_SCALE * (x + self.embed_pos[...].astype(cdt)[None])
    return math.sqrt(spec.hidden_size) * x

  def heads(self, y_BSD: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Token logits (prefix dropped) and Q logits (halt, continue), all fp32."""
    logits = self.lm_head(y_BSD[:, self.spec.prefix_len:]).astype(jnp.float32)
    q = self.q_head(y_BSD[:, 0]).astype(jnp.float32)
    return logits, q[..., 0], q[..., 1]
