"""Run a few train steps on one mesh and save the losses and final trainable params.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharded_steps.py 4x2 OUT.npz

Used by test_sharding.py (the device count must be set before jax starts, hence a subprocess).
"""

import functools
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from trm_jax import config, sharding, train
from trm_jax.config import ModelSpec


def main(mesh_arg: str, out: str):
  data, fsdp = (int(x) for x in mesh_arg.split("x"))
  mesh = sharding.make_mesh((data, fsdp), devices=jax.devices()[:data * fsdp])
  cfg = config.tiny()
  cfg.num_puzzle_identifiers = 16
  spec = ModelSpec.from_config(cfg)
  tcfg = ml_collections.ConfigDict(dict(
      lr=3e-3, lr_min_ratio=1.0, lr_warmup_steps=2, beta1=0.9, beta2=0.95, weight_decay=0.1,
      puzzle_emb_lr=1e-2, puzzle_emb_weight_decay=0.1, grad_clip_norm=1.0, ema=True,
      ema_rate=0.9))
  rng = np.random.default_rng(0)
  batches = []
  for _ in range(4):
    x = rng.integers(1, spec.vocab_size, (16, spec.seq_len))
    batches.append({"inputs": x.astype(np.int32), "labels": ((x + 1) % spec.vocab_size).astype(np.int32),
                    "puzzle_identifiers": rng.integers(0, 16, 16).astype(np.int32)})
  with jax.set_mesh(mesh):
    state = train.init_state(cfg, tcfg, jax.tree.map(jnp.asarray, batches[0]), 4, jax.random.key(0))
    state_sh = sharding.tree_shardings(mesh, state)
    state = jax.device_put(state, state_sh)
    step = jax.jit(functools.partial(train.train_step, spec=spec, train_cfg=tcfg, total_steps=4),
                   in_shardings=(state_sh, sharding.batch_sharding(mesh)),
                   out_shardings=(state_sh, None), donate_argnums=0)
    losses = []
    for batch in batches:
      state, metrics = step(state, sharding.global_batch(mesh, batch))
      losses.append(float(metrics["lm_loss"]))
    table_spec = str(state["puzzle_emb"].sharding.spec)
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_leaves_with_path(state["trainable"])}
  np.savez(out, losses=np.array(losses), table=np.asarray(state["puzzle_emb"]),
           table_spec=table_spec, **flat)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
