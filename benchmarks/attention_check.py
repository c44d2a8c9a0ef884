r"""Numerics of the fused (cuDNN) attention path against the XLA path, on a GPU.

    python benchmarks/attention_check.py --config arc_dis_medium --batch_size 32

Same random weights and batch for three runs: bf16 with `execution.attention=xla`, bf16 with
`execution.attention=cudnn`, and fp32 with `execution.attention=xla` (the reference). For each bf16 path it prints
the distance of the logits of every eval supervision step (fed back as the scheme does) from the
fp32 reference and the share of argmax tokens that agree with it, then the same for the
gradients of one training call. The fused path passes when its errors are of the size of the bf16
XLA path's, since both round the same operands to bf16 and differ only in summation order.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_trm  # noqa: E402


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default="arc_dis_medium", choices=sorted(bench_trm.CONFIGS))
  p.add_argument("--batch_size", type=int, default=32)
  p.add_argument("--steps", type=int, default=3)
  args = p.parse_args()

  import jax
  import jax.numpy as jnp
  import numpy as np
  from trm_jax import act, train
  from trm_jax import model as model_lib
  from trm_jax.config import ModelSpec
  from trm_jax.kernels import attention as attention_lib
  from trm_jax.kernels import execution

  base = bench_trm.CONFIGS[args.config]().model
  np_batch = bench_trm.random_batch(base.seq_len, base.vocab_size, base.num_puzzle_identifiers,
                                    args.batch_size)
  batch = {k: jnp.asarray(v) for k, v in np_batch.items()}
  params = model_lib.init_params(base, jax.random.key(0))
  # The official init zeroes nothing that attention reads; perturb the puzzle table too.
  if "puzzle_emb" in params:
    params["puzzle_emb"] = 0.02 * jax.random.normal(jax.random.key(1), params["puzzle_emb"].shape)

  def run(dtype: str, impl: str):
    spec = ModelSpec.from_config(dict(base.to_dict(), compute_dtype=dtype))
    if impl == "cudnn" and not attention_lib.uses_cudnn(impl, jnp.bfloat16, spec.hidden_size //
                                                        spec.num_heads):
      raise SystemExit("cuDNN attention does not apply here (needs an NVIDIA GPU)")

    @jax.jit
    def logits_per_step(params, batch):
      state = act.refresh(spec, act.initial_state(spec, batch), batch, jax.random.key(0))
      rows = model_lib.puzzle_rows(params, batch["puzzle_identifiers"])
      out = []
      for _ in range(args.steps):
        state, readout = act.advance(params, rows, spec, state, training=False)
        out.append(readout.logits)
      return jnp.stack(out)

    @jax.jit
    def grads(params, batch):
      state = act.refresh(spec, act.initial_state(spec, batch), batch, jax.random.key(0))
      rows = model_lib.puzzle_rows(params, batch["puzzle_identifiers"])
      loss = lambda p: train.supervision_loss(p, rows, spec, state, jax.random.key(2))[0]
      return jax.grad(loss)(params)

    with execution.using(execution.Settings(attention=impl)):
      return (jax.device_get(logits_per_step(params, batch)),
              jax.device_get(grads(params, batch)))

  ref_logits, ref_grads = run("float32", "xla")
  print(f"config {args.config}, batch {args.batch_size}, device {jax.devices()[0].device_kind}")
  print("| path | step | max abs logit diff vs fp32 | mean abs | argmax agreement |")
  print("|---|---|---|---|---|")
  grad_rows = []
  for impl in ("xla", "cudnn"):
    logits, g = run("bfloat16", impl)
    for s in range(args.steps):
      diff = np.abs(logits[s] - ref_logits[s])
      agree = (logits[s].argmax(-1) == ref_logits[s].argmax(-1)).mean()
      print(f"| bf16 {impl} | {s + 1} | {diff.max():.4f} | {diff.mean():.5f} | {100 * agree:.2f}% |")
    flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree.leaves(t)])
    a, r = flat(g), flat(ref_grads)
    grad_rows.append((impl, np.linalg.norm(a - r) / np.linalg.norm(r)))
  for impl, rel in grad_rows:
    print(f"bf16 {impl}: gradients of one training call, relative L2 error vs fp32 {rel:.4f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
