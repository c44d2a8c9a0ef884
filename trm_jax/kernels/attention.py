"""The one attention every attention layer uses: softmax(q k^T / sqrt(H)) v, non-causal (the
puzzle models) or causal (a language model: query t sees keys 0..t).

`impl` (model config field `attention`):
  "xla"   - two einsums and a softmax (below); the score tensor [B, N, T, S] is materialised in
            fp32. The path on CPU and TPU, and the numerics the parity tests pin.
  "cudnn" - cuDNN's fused (flash) attention through `jax.nn.dot_product_attention`: scores stay
            on chip, so memory grows with S, not S^2 (at ARC's S = 916 and batch 512 one fp32
            score tensor is 13.7 GB per layer call). NVIDIA GPUs, bf16/fp16 operands, head
            dimension a multiple of 8 up to 128; elsewhere it takes the XLA path.
  "auto"  - "cudnn" where it applies, else "xla".
Both compute the scores and softmax in fp32 and round the probabilities to the operand dtype
before the value contraction, as PyTorch's fused kernels do; they differ in summation order.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp

from trm_jax.config import ATTENTION_IMPLS as IMPLS
from trm_jax.kernels import target


def xla_attention(q_BTNH: jax.Array, k_BSNH: jax.Array, v_BSNH: jax.Array,
                  causal: bool = False) -> jax.Array:
  """[B, T, N, H] in and out. Scores and their softmax in fp32, the probabilities rounded to the
  input dtype, the output accumulated in fp32 and rounded once. Same math as
  `jax.nn.dot_product_attention`'s XLA path, but its einsums put the heads before the positions,
  which XLA:CPU ran 2.5x slower (10 vs 4 ms for Sudoku at batch 32) and, for bf16, with extra
  roundings in the output contraction (41% of outputs one bf16 ulp off the fp64 reference, here
  0.02%)."""
  scale = q_BTNH.shape[-1] ** -0.5
  scores = jnp.einsum("btnh,bsnh->bnts", q_BTNH, k_BSNH, preferred_element_type=jnp.float32)
  if causal:  # query t attends to keys s <= t (positions aligned: self-attention)
    T, S = scores.shape[-2:]
    scores = jnp.where(jnp.tril(jnp.ones((T, S), bool)), scores, -jnp.inf)
  probs = jax.nn.softmax(scores * scale, axis=-1).astype(v_BSNH.dtype)
  out = jnp.einsum("bnts,bsnh->btnh", probs, v_BSNH, preferred_element_type=jnp.float32)
  return out.astype(v_BSNH.dtype)


def nvidia_gpu() -> bool:
  """The trace is for CUDA GPUs (`target.current()`: cuDNN is there)."""
  return target.current().nvidia


def uses_cudnn(impl: str, dtype, head_dim: int) -> bool:
  """Whether `attention(..., impl)` runs cuDNN's fused kernel (decided at trace time; the model
  config's `attention` is part of the jit key)."""
  if impl not in IMPLS:
    raise ValueError(f"attention implementation {impl!r}; choose one of {IMPLS}")
  return (impl != "xla" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
          and head_dim % 8 == 0 and head_dim <= 128 and nvidia_gpu())


def attention(q_BTNH: jax.Array, k_BSNH: jax.Array, v_BSNH: jax.Array,
              impl: str = "auto", causal: bool = False) -> jax.Array:
  if uses_cudnn(impl, q_BTNH.dtype, q_BTNH.shape[-1]):
    return jax.nn.dot_product_attention(q_BTNH, k_BSNH, v_BSNH, is_causal=causal,
                                        implementation="cudnn")
  return xla_attention(q_BTNH, k_BSNH, v_BSNH, causal)
