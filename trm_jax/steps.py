"""The jitted programs a run executes, lowered for a mesh: the training step and the evaluation
batch. `main` compiles them for its devices; `python -m trm_jax.aot` for a TPU slice it does not
have (abstract inputs: `jax.ShapeDtypeStruct`s with shardings). One builder for both, so what
`aot` measures is what `main` runs.

The devices of `mesh` decide the kernels the trace may use (trm_jax/kernels/target.py): the
CPU kernels only for one CPU device, cuDNN attention only on NVIDIA GPUs; never the process's
default backend. Which kernels among those are the execution settings current when a builder is
called (trm_jax/kernels/execution.py); each call jits afresh, so no trace serves other settings.
"""

from __future__ import annotations

import functools

import jax
import ml_collections

from trm_jax import inference
from trm_jax import sharding as sharding_lib
from trm_jax import train as train_lib
from trm_jax.config import ModelSpec
from trm_jax.data import pipeline
from trm_jax.kernels import target


def train_step(spec: ModelSpec, train_cfg: ml_collections.ConfigDict, total_steps: int, mesh,
               state, batch) -> jax.stages.Lowered:
  """`train.train_step` jitted with the state sharded by `sharding.tree_shardings` (donated)
  and the batch split over the mesh's batch axes, lowered for `state` and `batch` (arrays or
  ShapeDtypeStructs)."""
  state_shardings = sharding_lib.tree_shardings(mesh, state)
  jitted = jax.jit(
      functools.partial(train_lib.train_step, spec=spec, train_cfg=train_cfg,
                        total_steps=total_steps),
      in_shardings=(state_shardings, sharding_lib.batch_sharding(mesh)),
      out_shardings=(state_shardings, None), donate_argnums=0)
  with target.lowering_for(mesh, sharding_lib.BATCH_AXES):
    return jitted.lower(state, batch)


def eval_step(spec: ModelSpec, strategy: inference.Strategy, mesh, params, rows
              ) -> jax.stages.Lowered:
  """`inference.eval_batch` with `strategy`, lowered for `params` (as the train state holds
  them: `train.eval_params`) and one global batch of `rows` (its MODEL_KEYS, split over the
  batch axes)."""
  rows = {k: rows[k] for k in pipeline.MODEL_KEYS}
  jitted = jax.jit(functools.partial(inference.eval_batch, spec=spec, strategy=strategy),
                   in_shardings=(sharding_lib.tree_shardings(mesh, params, batch_prefixes=()),
                                 sharding_lib.batch_sharding(mesh)))
  with target.lowering_for(mesh, sharding_lib.BATCH_AXES):
    return jitted.lower(params, rows)
