"""Functional model API: parameters are a plain nested dict, every function is pure.

The NNX modules in `nn.py` define the network; here they are split into a graph definition
(cached per `ModelSpec`) and a plain dict of arrays, which is what optimisers, shardings and
checkpoints handle. `nnx.merge` puts them back together inside traced code.

Parameter dict (`params`), with D = hidden size:
  embed_tokens [V, D], embed_pos [S+P, D] (learned positions only), puzzle_emb [N, Dp],
  net/layers/<i>/{mixer,mlp}/..., lm_head/kernel [D, V], q_head/{kernel [D, 2], bias [2]},
  y_init [D], z_init [D].
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from trm_jax import nn, recursion
from trm_jax.config import ModelSpec
from trm_jax.recursion import Latents

Params = dict[str, Any]
Carry = dict[str, jax.Array]  # {'y': [B,S,D], 'z': [B,S,D], 'reset': bool [B]}

REMAT_POLICIES = {
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _stringify_keys(tree):
  if isinstance(tree, Mapping):
    return {str(k): _stringify_keys(v) for k, v in tree.items()}
  return tree


@functools.lru_cache(maxsize=None)
def _graph(spec: ModelSpec):
  """(graphdef of the whole model, graphdef of the reasoning net) for a spec."""
  abstract = nnx.eval_shape(lambda: nn.TinyRecursiveModel(spec, rngs=nnx.Rngs(0)))
  return nnx.graphdef(abstract), nnx.graphdef(abstract.net)


def _merge(spec: ModelSpec, params: Params) -> nn.TinyRecursiveModel:
  return nnx.merge(_graph(spec)[0], params)


@functools.lru_cache(maxsize=None)
def variable_kinds(spec: ModelSpec) -> dict[str, str]:
  """Top-level params key -> 'param' | 'puzzle_table' | 'constant' (decides the optimiser)."""
  abstract = nnx.eval_shape(lambda: nn.TinyRecursiveModel(spec, rngs=nnx.Rngs(0)))
  kinds = {}
  for kind, variable_type in (("param", nnx.Param), ("puzzle_table", nn.PuzzleTable),
                              ("constant", nn.Constant)):
    for key in nnx.to_pure_dict(nnx.state(abstract, variable_type)):
      kinds[str(key)] = kind
  return kinds


def init_params(model_config, rng: jax.Array) -> Params:
  """Freshly initialised parameters (official init: truncated LeCun, zero puzzle table, ...)."""
  spec = ModelSpec.from_config(model_config)
  model = nn.TinyRecursiveModel(spec, rngs=nnx.Rngs(params=rng))
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
  """A carry whose every row starts from the initial latents at the next step."""
  spec = ModelSpec.from_config(model_config)
  shape = (batch_size, spec.total_len, spec.hidden_size)
  return {
      "y": jnp.zeros(shape, spec.jnp_compute_dtype),
      "z": jnp.zeros(shape, spec.jnp_compute_dtype),
      "reset": jnp.ones((batch_size,), bool),
  }


def puzzle_rows(params: Params, puzzle_identifiers: jax.Array) -> jax.Array | None:
  """Rows of the puzzle table for a batch (None when the model has no puzzle embedding)."""
  if "puzzle_emb" not in params:
    return None
  return jnp.take(params["puzzle_emb"], puzzle_identifiers.astype(jnp.int32), axis=0)


def _net_fn(spec: ModelSpec) -> recursion.NetFn:
  net_graph = _graph(spec)[1]

  def net(net_params, h, injection):
    return nnx.merge(net_graph, net_params)(h, injection)

  if spec.remat != "none":
    net = jax.checkpoint(net, policy=REMAT_POLICIES[spec.remat])
  return net


def forward(params: Params, spec: ModelSpec, carry: Carry, inputs: jax.Array,
            rows: jax.Array | None) -> tuple[Carry, jax.Array, jax.Array, jax.Array]:
  """One supervision step given the batch's puzzle-table rows (pure; differentiable).

  Rows flagged `carry['reset']` restart from the initial latents. Returns the detached new
  carry (reset cleared), token logits [B, L, V] and Q logits (halt, continue) [B], all fp32.
  """
  model = _merge(spec, params)
  cdt = spec.jnp_compute_dtype
  reset = carry["reset"][:, None, None]
  latents = Latents(jnp.where(reset, params["y_init"].astype(cdt)[None, None], carry["y"]),
                    jnp.where(reset, params["z_init"].astype(cdt)[None, None], carry["z"]))
  x = model.embed(inputs, rows)
  scheme = recursion.get_scheme(spec.scheme)
  latents = scheme.recur(spec, _net_fn(spec), params["net"], latents, x)
  logits, q_halt, q_continue = model.heads(latents.y)
  new_carry = {
      "y": jax.lax.stop_gradient(latents.y),
      "z": jax.lax.stop_gradient(latents.z),
      "reset": jnp.zeros_like(carry["reset"]),
  }
  return new_carry, logits, q_halt, q_continue


@functools.partial(jax.jit, static_argnums=1)
def _supervision_step(params, spec, carry, inputs, puzzle_identifiers):
  return forward(params, spec, carry, inputs, puzzle_rows(params, puzzle_identifiers))


def supervision_step(params: Params, model_config, carry: Carry, batch: Mapping[str, jax.Array]):
  """Eval-mode supervision step: `(carry, logits, q_halt, q_continue)`.

  `batch` holds `inputs` [B, L] (int token ids) and `puzzle_identifiers` [B].
  """
  spec = ModelSpec.from_config(model_config)
  for key in ("inputs", "puzzle_identifiers"):
    if key not in batch:
      raise KeyError(f"batch is missing '{key}' (has {sorted(batch)})")
  inputs = jnp.asarray(batch["inputs"])
  if inputs.ndim != 2 or inputs.shape[1] != spec.seq_len:
    raise ValueError(f"batch['inputs'] has shape {inputs.shape}; expected [batch, {spec.seq_len}]")
  if carry["y"].shape[0] != inputs.shape[0]:
    raise ValueError(f"carry batch size {carry['y'].shape[0]} != batch size {inputs.shape[0]}")
  return _supervision_step(params, spec, carry, inputs, jnp.asarray(batch["puzzle_identifiers"]))


def forward_passes_per_step(model_config) -> int:
  """Network calls in one supervision step under the configured scheme."""
  spec = ModelSpec.from_config(model_config)
  return recursion.get_scheme(spec.scheme).forward_passes(spec)
