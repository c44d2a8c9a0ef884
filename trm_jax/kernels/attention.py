"""The one attention every attention layer uses: softmax(q k^T / sqrt(H)) v, non-causal (the
puzzle models) or causal (a language model: query t sees keys 0..t).

`impl` (IMPLS; the execution setting `attention`: kernels/execution.py):
  "xla"   - two einsums and a softmax (below); the score tensor [B, N, T, S] is materialised in
            fp32. The path on CPU, and the numerics the parity tests pin.
  "cudnn" - cuDNN's fused (flash) attention through `jax.nn.dot_product_attention`: scores stay
            on chip, so memory grows with S, not S^2 (at ARC's S = 916 and batch 512 one fp32
            score tensor is 13.7 GB per layer call). NVIDIA GPUs, bf16/fp16 operands, head
            dimension a multiple of 8 up to 128; elsewhere it takes the XLA path.
  "tpu_flash" - the Pallas flash attention kernel of jax.experimental.pallas.ops.tpu on TPUs
            (elsewhere the XLA path): the same on-chip scores. Positions are padded to a
            multiple of the kernel's 128-row blocks and the padding masked out by segment ids.
            With the XLA path, the S^2 scores were 63% of the DIS ARC-medium step's HBM
            traffic on a TPU (BUILD_NOTES, "Compiled for TPU slices").
  "auto"  - "cudnn" on NVIDIA GPUs, "tpu_flash" on TPUs, where they apply; else "xla".
All compute the scores and softmax in fp32 and round the probabilities to the operand dtype
before the value contraction, as PyTorch's fused kernels do; they differ in summation order.
The platform is the one being traced for (`target.current()`), not the process's backend.
"""

from __future__ import annotations


import functools

import jax
import jax.numpy as jnp

from trm_jax.kernels import target

IMPLS = ("auto", "xla", "cudnn", "tpu_flash")


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
  """Whether `attention(..., impl)` runs cuDNN's fused kernel (decided at trace time)."""
  if impl not in IMPLS:
    raise ValueError(f"attention implementation {impl!r}; choose one of {IMPLS}")
  return (impl in ("auto", "cudnn") and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
          and head_dim % 8 == 0 and head_dim <= 128 and nvidia_gpu())


def uses_tpu_flash(impl: str) -> bool:
  """Whether `attention(..., impl)` runs the Pallas TPU flash kernel (decided at trace time)."""
  if impl not in IMPLS:
    raise ValueError(f"attention implementation {impl!r}; choose one of {IMPLS}")
  return impl in ("auto", "tpu_flash") and target.current().platform == "tpu"


TPU_BLOCK = 128  # the Pallas kernel's block along the positions


def tpu_flash_attention(q_BTNH: jax.Array, k_BSNH: jax.Array, v_BSNH: jax.Array,
                        causal: bool = False) -> jax.Array:
  """Pallas flash attention (jax.experimental.pallas.ops.tpu) on [B, T, N, H]. XLA cannot
  partition a Mosaic kernel, so on a mesh (`target.current().mesh`) each device runs it on its
  rows of the batch (shard_map over the batch axes)."""
  where = target.current()
  local = functools.partial(_tpu_flash_local, causal=causal)
  if where.mesh is None or where.mesh.size == 1:
    return local(q_BTNH, k_BSNH, v_BSNH)
  rows = jax.sharding.PartitionSpec(where.batch_axes)
  return jax.shard_map(local, mesh=where.mesh, in_specs=(rows, rows, rows), out_specs=rows,
                       check_vma=False)(q_BTNH, k_BSNH, v_BSNH)


def _tpu_flash_local(q_BTNH, k_BSNH, v_BSNH, causal: bool):
  """T and S padded to multiples of TPU_BLOCK; padded keys get segment id 0 and real ones 1,
  so no real query sees a padded key (the padded queries' rows are dropped)."""
  from jax.experimental.pallas.ops.tpu import flash_attention as pallas_flash
  T, S = q_BTNH.shape[1], k_BSNH.shape[1]
  T_pad, S_pad = -(-T // TPU_BLOCK) * TPU_BLOCK, -(-S // TPU_BLOCK) * TPU_BLOCK

  def heads_first(x, length):  # [B, L, N, H] -> [B, N, L_pad, H]
    x = jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, 0)))
    return jnp.transpose(x, (0, 2, 1, 3))

  segments = None
  if (T_pad, S_pad) != (T, S):
    B = q_BTNH.shape[0]
    segment = lambda real, padded: jnp.broadcast_to(
        (jnp.arange(padded) < real).astype(jnp.int32), (B, padded))
    segments = pallas_flash.SegmentIds(q=segment(T, T_pad), kv=segment(S, S_pad))
  block = lambda n: min(TPU_BLOCK, n)
  sizes = pallas_flash.BlockSizes(
      block_q=block(T_pad), block_k_major=block(S_pad), block_k=block(S_pad), block_b=1,
      block_q_major_dkv=block(T_pad), block_k_major_dkv=block(S_pad), block_k_dkv=block(S_pad),
      block_q_dkv=block(T_pad), block_k_major_dq=block(S_pad), block_k_dq=block(S_pad),
      block_q_dq=block(T_pad))
  out = pallas_flash.flash_attention(
      heads_first(q_BTNH, T_pad), heads_first(k_BSNH, S_pad), heads_first(v_BSNH, S_pad),
      segment_ids=segments, causal=causal, sm_scale=q_BTNH.shape[-1] ** -0.5,
      block_sizes=sizes)
  return jnp.transpose(out, (0, 2, 1, 3))[:, :T].astype(v_BSNH.dtype)


def attention(q_BTNH: jax.Array, k_BSNH: jax.Array, v_BSNH: jax.Array,
              impl: str = "auto", causal: bool = False) -> jax.Array:
  if uses_cudnn(impl, q_BTNH.dtype, q_BTNH.shape[-1]):
    return jax.nn.dot_product_attention(q_BTNH, k_BSNH, v_BSNH, is_causal=causal,
                                        implementation="cudnn")
  if uses_tpu_flash(impl):
    return tpu_flash_attention(q_BTNH, k_BSNH, v_BSNH, causal)
  return xla_attention(q_BTNH, k_BSNH, v_BSNH, causal)
