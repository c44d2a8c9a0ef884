"""Functional model API: parameters are a plain nested dict, every function is pure.

The configured scheme (`scheme_of`: bound once per spec, trm_jax/schemes/) builds the NNX
modules; its graph definition and a plain dict of arrays are kept apart, the dict being what
optimisers, shardings and checkpoints handle, and `nnx.merge` puts them back together inside
traced code. The dict's keys are the scheme's modules' (TRM: embed_tokens [V, D], embed_pos,
puzzle_emb [N, Dp], net/layers/<i>/{mixer,mlp}/..., lm_head/kernel [D, V], q_head/{kernel,
bias}, y_init [D], z_init [D]); `variable_kinds` sorts them by optimiser.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from trm_jax import nn, recursion, schemes
from trm_jax.config import ModelSpec
from trm_jax.kernels import execution

Params = dict[str, Any]
Carry = dict[str, jax.Array]  # the scheme's per-row state + {'steps': int32 [B], 'reset': bool [B]}


def _stringify_keys(tree):
  if isinstance(tree, Mapping):
    return {str(k): _stringify_keys(v) for k, v in tree.items()}
  return tree


def scheme_of(model_config) -> recursion.Scheme:
  """The configured scheme, bound to the model spec (built once per spec)."""
  return schemes.bind(ModelSpec.from_config(model_config))


@functools.lru_cache(maxsize=None)
def variable_kinds(spec: ModelSpec) -> dict[str, str]:
  """Top-level params key -> 'param' | 'puzzle_table' | 'constant' (decides the optimiser)."""
  abstract = scheme_of(spec).abstract_module
  kinds = {}
  for kind, variable_type in (("param", nnx.Param), ("puzzle_table", nn.PuzzleTable),
                              ("constant", nn.Constant)):
    for key in nnx.to_pure_dict(nnx.state(abstract, variable_type)):
      kinds[str(key)] = kind
  return kinds


def init_params(model_config, rng: jax.Array) -> Params:
  """Freshly initialised parameters (official init: truncated LeCun, zero puzzle table, ...)."""
  model = scheme_of(model_config).build(nnx.Rngs(params=rng))
  return _stringify_keys(nnx.to_pure_dict(nnx.state(model)))


def abstract_params(model_config) -> Params:
  """Shapes and dtypes of `init_params`' result, without allocating anything."""
  spec = ModelSpec.from_config(model_config)
  return jax.eval_shape(lambda: init_params(spec, jax.random.key(0)))


def count_params(params: Params, include_puzzle_table: bool = False) -> int:
  return sum(x.size for path, x in jax.tree_util.tree_leaves_with_path(params)
             if include_puzzle_table or _top_key(path) != "puzzle_emb")


def _top_key(path) -> str:
  return path[0].key if hasattr(path[0], "key") else str(path[0])


def initial_carry(model_config, batch_size: int) -> Carry:
  """A carry whose every row starts afresh at the next step: the scheme's per-row state plus
  `steps` (supervision steps taken, int32 [B]) and `reset` (restart from the initial latents)."""
  return {**scheme_of(model_config).initial_carry(batch_size),
          "steps": jnp.zeros((batch_size,), jnp.int32),
          "reset": jnp.ones((batch_size,), bool)}


def puzzle_rows(params: Params, puzzle_identifiers: jax.Array) -> jax.Array | None:
  """Rows of the puzzle table for a batch (None when the model has no puzzle embedding)."""
  if "puzzle_emb" not in params:
    return None
  return jnp.take(params["puzzle_emb"], puzzle_identifiers.astype(jnp.int32), axis=0)


def step(params: Params, rows: jax.Array | None, spec: ModelSpec, carry: Carry, data,
         rng: jax.Array | None = None, *, training: bool, record: bool = False
         ) -> tuple[Carry, recursion.Readout]:
  """One supervision step of the configured scheme (pure; differentiable). Row b takes step
  t = carry['steps'][b] + 1; the returned carry is detached, with `steps` = t and `reset`
  cleared. With `record`, `readout.trace` [U, B, L, V] holds the readouts after each of the
  step's U updates (U = 1, the step's own readout, for a scheme without `update_trace`)."""
  t = carry["steps"] + 1
  new_carry, readout = scheme_of(spec).step(params, rows, carry, data, t, rng,
                                            training=training, record=record)
  if record and readout.trace is None:  # a scheme that reads out once per step
    readout = readout._replace(trace=readout.logits[None])
  return dict(new_carry, steps=t, reset=jnp.zeros_like(carry["reset"])), readout


def forward(params: Params, spec: ModelSpec, carry: Carry, inputs: jax.Array,
            rows: jax.Array | None) -> tuple[Carry, jax.Array, jax.Array, jax.Array]:
  """An eval-mode supervision step given the batch's puzzle-table rows:
  (carry, logits [B, L, V], q_halt [B], q_continue [B]), all fp32."""
  carry, readout = step(params, rows, spec, carry, {"inputs": inputs}, training=False)
  return carry, readout.logits, readout.q_halt, readout.q_continue


# The execution settings are a static argument: the trace reads them, so a call under other
# settings must not reuse it.
@functools.partial(jax.jit, static_argnums=(1, 2))
def _supervision_step(params, spec, settings, carry, inputs, puzzle_identifiers):
  with execution.using(settings):
    return forward(params, spec, carry, inputs, puzzle_rows(params, puzzle_identifiers))


def supervision_step(params: Params, model_config, carry: Carry, batch: Mapping[str, jax.Array]):
  """Eval-mode supervision step: `(carry, logits, q_halt, q_continue)`.

  `batch` holds `inputs` [B, L] (int token ids) and `puzzle_identifiers` [B]. The kernels are
  the current execution settings' (trm_jax/kernels/execution.py).
  """
  spec = ModelSpec.from_config(model_config)
  for key in ("inputs", "puzzle_identifiers"):
    if key not in batch:
      raise KeyError(f"batch is missing '{key}' (has {sorted(batch)})")
  inputs = jnp.asarray(batch["inputs"])
  if inputs.ndim != 2 or inputs.shape[1] != spec.seq_len:
    raise ValueError(f"batch['inputs'] has shape {inputs.shape}; expected [batch, {spec.seq_len}]")
  if carry["steps"].shape[0] != inputs.shape[0]:
    raise ValueError(f"carry batch size {carry['steps'].shape[0]} != batch size {inputs.shape[0]}")
  return _supervision_step(params, spec, execution.current(), carry, inputs,
                           jnp.asarray(batch["puzzle_identifiers"]))


def forward_passes_per_step(model_config) -> int:
  """Network calls in one supervision step under the configured scheme."""
  return scheme_of(model_config).forward_passes()
