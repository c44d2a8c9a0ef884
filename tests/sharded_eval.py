"""Evaluate a trained run's checkpoint on a mesh and save the result and each device's rows.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/sharded_eval.py RUN 8x1 OUT.json
    python tests/sharded_eval.py RUN 2x1 OUT.json --coordinator 127.0.0.1:PORT --process_id I

Used by test_sharding.py (the device count and the process group must be set up before jax
starts, hence a subprocess). With --coordinator, two processes of one CPU device each join one
mesh. Process 0 writes OUT (the evaluation result); each process writes the rows each of its
devices computed to OUT.rows<process index>.
"""

import argparse
import functools
import json

import jax
import numpy as np


def main():
  p = argparse.ArgumentParser()
  p.add_argument("run")
  p.add_argument("mesh")
  p.add_argument("out")
  p.add_argument("--coordinator", default=None)
  p.add_argument("--process_id", type=int, default=0)
  args = p.parse_args()
  if args.coordinator:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator, 2, args.process_id)

  import trm_jax
  from trm_jax import evaluation, inference, sharding
  from trm_jax.config import ModelSpec
  from trm_jax.data import datasets

  mesh = sharding.make_mesh(tuple(int(x) for x in args.mesh.split("x")))
  run = trm_jax.load(args.run, mesh=mesh)
  cfg = run.config
  cfg.eval.max_batches = 0  # the whole test split (several batches, the last one padded)
  spec = ModelSpec.from_config(run.model_config)
  strategy = inference.Strategy.from_config(cfg.eval)
  rows_per_device = {}

  def counting(params, batch):
    for shard in batch["inputs"].addressable_shards:
      rows_per_device[str(shard.device)] = (rows_per_device.get(str(shard.device), 0)
                                            + shard.data.shape[0])
    return jitted(params, batch)

  jitted = jax.jit(functools.partial(inference.eval_batch, spec=spec, strategy=strategy))
  with jax.set_mesh(mesh):
    source = datasets.builder_for(cfg.data).as_data_source()["test"]
    evaluator = evaluation.arc_evaluator_for(cfg)
    result = evaluation.evaluate(counting, run.params, source, cfg, spec, mesh, evaluator,
                               strategy)
  if jax.process_index() == 0:
    with open(args.out, "w") as f:
      json.dump({"result": result, "records": len(source),
                 "submission": evaluator.submission(),  # the vote's ranked attempts
                 "candidates": {f"{t}/{i}": [[c[1], c[2]] for c in evaluator.candidates(t, i)]
                                for t, task in evaluator.tasks.items()
                                for i in range(len(task.test))}}, f)
  with open(f"{args.out}.rows{jax.process_index()}", "w") as f:
    json.dump(rows_per_device, f)
  if args.coordinator:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("sharded_eval done")
    jax.distributed.shutdown()


if __name__ == "__main__":
  np.set_printoptions(linewidth=200)
  main()
