"""Deep-supervision training steps, as pure functions of a plain train state (evaluation:
inference.py).

Train state (a pytree; shardings and Orbax apply to it as is):
  step       - optimiser updates done (int32)
  trainable  - dense weights (nnx.Param), updated by AdamATan2
  puzzle_emb - the puzzle table, updated by sparse sign-SGD (absent without puzzle embeddings)
  constants  - fixed initial latents
  opt_state  - AdamATan2 moments
  ema        - EMA of `trainable` (absent when the EMA is off); used for evaluation
  act        - the ACT carry that persists across steps (see act.py)
  rng        - raw PRNG key data (uint32, checkpointable), folded with the step
One train step = one supervision step of every row + one optimiser update, as in the official
trainer; rows that halted take the next example of the incoming batch.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax

from trm_jax import act
from trm_jax import flops as flops_lib
from trm_jax import model as model_lib
from trm_jax import optim, recursion
from trm_jax.config import ModelSpec

State = dict[str, Any]
Batch = Mapping[str, jax.Array]


def split_params(spec: ModelSpec, params: model_lib.Params):
  """(trainable, puzzle table or None, constants) by variable kind."""
  kinds = model_lib.variable_kinds(spec)
  trainable = {k: v for k, v in params.items() if kinds[k] == "param"}
  constants = {k: v for k, v in params.items() if kinds[k] == "constant"}
  return trainable, params.get("puzzle_emb"), constants


def join_params(trainable, table, constants) -> model_lib.Params:
  params = {**trainable, **constants}
  if table is not None:
    params["puzzle_emb"] = table
  return params


def schedules(train_cfg: ml_collections.ConfigDict, total_steps: int):
  make = lambda lr: optim.warmup_cosine(lr, train_cfg.lr_warmup_steps, total_steps,
                                        train_cfg.lr_min_ratio)
  return make(train_cfg.lr), make(train_cfg.puzzle_emb_lr)


def make_optimizer(train_cfg: ml_collections.ConfigDict, total_steps: int):
  lr, _ = schedules(train_cfg, total_steps)
  parts = []
  if train_cfg.grad_clip_norm > 0:
    parts.append(optax.clip_by_global_norm(train_cfg.grad_clip_norm))
  if train_cfg.get("optimizer", "adam_atan2") == "adamw":  # the official DIS ARC script's
    parts.append(optax.adamw(lr, train_cfg.beta1, train_cfg.beta2, eps=1e-8,
                             weight_decay=train_cfg.weight_decay))
  else:
    parts.append(optim.adam_atan2(lr, train_cfg.beta1, train_cfg.beta2, train_cfg.weight_decay))
  return optax.chain(*parts)


def init_state(model_config, train_cfg: ml_collections.ConfigDict, example_batch: Batch,
               total_steps: int, rng: jax.Array, params: model_lib.Params | None = None) -> State:
  spec = ModelSpec.from_config(model_config)
  init_rng, rng = jax.random.split(rng)
  if params is None:
    params = model_lib.init_params(spec, init_rng)
  trainable, table, constants = split_params(spec, params)
  state = {
      "step": jnp.zeros([], jnp.int32),
      "trainable": trainable,
      "constants": constants,
      "opt_state": make_optimizer(train_cfg, total_steps).init(trainable),
      "act": act.initial_state(spec, example_batch),
      "rng": jax.random.key_data(rng),
  }
  if table is not None:
    state["puzzle_emb"] = table
  if train_cfg.ema:
    state["ema"] = jax.tree.map(jnp.copy, trainable)
  return state


def supervision_loss(params: model_lib.Params, rows: jax.Array | None, spec: ModelSpec,
                     act_state: act.State, rng: jax.Array | None = None
                     ) -> tuple[jax.Array, tuple[act.State, dict]]:
  """The official training call (the loss head): one supervision step on the refreshed ACT
  state, then the scheme's loss against its targets for the step. Returns (loss, (new ACT state,
  metrics)); differentiable with respect to `params` and the batch's puzzle-table `rows`."""
  scheme = model_lib.scheme_of(spec)
  new_act, readout = act.advance(params, rows, spec, act_state, rng, training=True)
  carry, data = new_act["carry"], new_act["data"]
  loss, metrics = scheme.loss(readout, scheme.targets(carry, data), carry, data,
                              new_act["halted"])
  recursion.check_metrics(scheme, metrics)
  return loss, (new_act, metrics)


def step_loss(state: State, batch: Batch, spec: ModelSpec):
  """What one train step differentiates: (loss_fn, trainable, rows, ids), where
  loss_fn(trainable, rows) -> (loss per example of the batch, (new ACT state, metrics)) and
  `rows` are the puzzle-table rows of the refreshed batch (None without a table)."""
  global_batch = batch["inputs"].shape[0]
  step_rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
  act_state = act.refresh(spec, state["act"], batch, jax.random.fold_in(step_rng, 1))
  table = state.get("puzzle_emb")
  ids = act_state["data"]["puzzle_identifiers"].astype(jnp.int32)
  rows = None if table is None else jnp.take(table, ids, axis=0)

  def loss_fn(trainable, rows):
    params = join_params(trainable, table, state["constants"])
    loss, aux = supervision_loss(params, rows, spec, act_state, step_rng)
    return loss / global_batch, aux

  return loss_fn, state["trainable"], rows, ids


def train_step(state: State, batch: Batch, *, spec: ModelSpec,
               train_cfg: ml_collections.ConfigDict, total_steps: int) -> tuple[State, dict]:
  """One supervision step for every row and one optimiser update (jit with donated state)."""
  loss_fn, trainable, rows, ids = step_loss(state, batch, spec)
  table = state.get("puzzle_emb")
  (_, (new_act, metrics)), (grads, row_grads) = jax.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=True)(trainable, rows)
  optimizer = make_optimizer(train_cfg, total_steps)
  updates, opt_state = optimizer.update(grads, state["opt_state"], state["trainable"])
  trainable = optax.apply_updates(state["trainable"], updates)
  step = state["step"] + 1
  lr, emb_lr = schedules(train_cfg, total_steps)
  new_state = dict(state, step=step, trainable=trainable, opt_state=opt_state, act=new_act)
  if table is not None:
    new_state["puzzle_emb"] = optim.sparse_sign_sgd(table, ids, row_grads, emb_lr(step),
                                                    train_cfg.puzzle_emb_weight_decay)
  if "ema" in state:
    new_state["ema"] = optim.ema_update(state["ema"], trainable, train_cfg.ema_rate)
  metrics = dict(metrics, lr=lr(step), grad_norm=optax.tree.norm(grads))
  return new_state, metrics


def eval_params(state: State) -> model_lib.Params:
  """The weights evaluation uses: the EMA when there is one."""
  return join_params(state.get("ema", state["trainable"]), state.get("puzzle_emb"),
                     state["constants"])


def step_flops(spec: ModelSpec, train_cfg, total_steps: int, state, batch) -> int:
  """Model matmul FLOPs of one `train_step` (`flops.model_flops`: its jaxpr, XLA's dot and
  attention, no remat); abstract `state` and `batch` are enough. MFU's numerator."""
  return flops_lib.model_flops(
      spec, functools.partial(train_step, train_cfg=train_cfg, total_steps=total_steps),
      state, batch)
