"""Pieces shared by the experiment configs: the official training recipe and the runlocal shrink."""

import ml_collections

# (data, fsdp): -1 takes all devices. Pods: e.g. (-1, 4) shards parameters 4 ways (BUILD_NOTES.md).
DEFAULT_MESH = (-1, 1)


def execution(**overrides) -> ml_collections.ConfigDict:
  """The kernels the steps run on (trm_jax/kernels/execution.py): how, not what, they compute,
  so a resume may change them. "auto": the fastest that applies where the program runs."""
  values = dict(matmul="auto", attention="auto")  # matmul: xla | xla_native | amx | avx512
  values.update(overrides)
  return ml_collections.ConfigDict(values)


def train_recipe(**overrides) -> ml_collections.ConfigDict:
  """The official TRM training hyper-parameters (config/cfg_pretrain.yaml + the README commands)."""
  values = dict(
      global_batch_size=768,
      epochs=100_000,
      eval_interval=10_000,  # epochs
      lr=1e-4,
      lr_min_ratio=1.0,  # 1.0: constant after warmup
      lr_warmup_steps=2000,
      optimizer="adam_atan2",  # or "adamw" (torch.optim.AdamW, eps 1e-8)
      beta1=0.9,
      beta2=0.95,
      weight_decay=0.1,
      puzzle_emb_lr=1e-2,
      puzzle_emb_weight_decay=0.1,
      grad_clip_norm=0.0,  # 0: off (the official trainer does not clip)
      ema=True,
      ema_rate=0.999,
      seed=0,
      max_steps=0,  # 0: train.epochs decides; else at most this many steps
      log_every_steps=50,
      checkpoint_every_steps=0,  # 0: at every evaluation
      keep_checkpoints=3,
      keep_best_checkpoints=0,  # >0: also keep the best on validation exact_accuracy
      profile_steps=(),  # steps to trace with jax.profiler (trm_jax/profiling.py)
  )
  values.update(overrides)
  return ml_collections.ConfigDict(values)


def eval_recipe(**overrides) -> ml_collections.ConfigDict:
  # Inference strategy fields: trm_jax/inference.py (defaults: plain inference, N_sup steps).
  values = dict(global_batch_size=768, max_batches=0, guidance_w=1.0, guidance="step",
                halt="fixed", converge_k=1, max_steps=0, rollouts=1, noise=0.0, pick="q", seed=0)
  values.update(overrides)
  return ml_collections.ConfigDict(values)


def data_spec(builder: str, builder_config: dict, manual_dir: str = "", generate=None):
  return ml_collections.ConfigDict(dict(
      builder=builder, builder_config=builder_config, manual_dir=manual_dir, data_dir="",
      generate=generate or dict(kind="")))


def dis(model: ml_collections.ConfigDict, n_sup: int) -> ml_collections.ConfigDict:
  """The official DIS recursion on a model config: T=1, n=2 (all with gradient), exactly n_sup
  supervision steps, no exploration (POLICY_IMPROVEMENT.md)."""
  model.scheme = "dis"
  model.H_cycles = 1
  model.L_cycles = 2
  model.halt_max_steps = n_sup
  model.halt_exploration_prob = 0.0
  # The official code's behaviour, spelled out so each can be overridden from the command line.
  model.scheme_options = dict(input="prediction", targets="path", loss_weights="uniform",
                              halting="none", cfg_dropout=0.0, loss="official")
  return model


def hrm(model: ml_collections.ConfigDict, layers: int = 4) -> ml_collections.ConfigDict:
  """HRM's recursion on a model config (sapientinc/HRM config/arch/hrm_v1.yaml): H and L levels
  of `layers` blocks, H_cycles 2, L_cycles 2, the ceil-div prefix, Q-continue always trained."""
  model.scheme = "hrm"
  model.scheme_options = dict(h_layers=layers)
  model.num_layers = layers
  model.H_cycles = 2
  model.L_cycles = 2
  model.puzzle_emb_len = 0
  model.no_ACT_continue = False
  return model


def hrm_train_recipe(**overrides) -> ml_collections.ConfigDict:
  """sapientinc/HRM config/cfg_pretrain.yaml (no EMA), with the README command's overrides."""
  return train_recipe(**{"ema": False, **overrides})


# runlocal: at sequence lengths past this, attention's [B, heads, S, S] scores dominate a CPU
# step (ARC / Maze: S = 900), so batch and heads shrink further.
LONG_SEQ = 256


def runlocal(config: ml_collections.ConfigDict, **data_overrides) -> ml_collections.ConfigDict:
  """Shrinks an experiment to a CPU check of a few minutes on 2 cores.

  The code path stays the full recipe's: the same builder reading the same file format at the
  same sequence length, the same model family, compute dtype, optimiser, evaluation and
  checkpointing. What shrinks: the network (hidden 64, n and T at most 2, 4 supervision
  steps), the data (`data_overrides` for the builder config, under the name
  `<name>_runlocal` so the full dataset is never overwritten or reused), the batches, the steps
  (`train.max_steps`) and the evaluation (2 batches).
  """
  long_seq = config.model.seq_len > LONG_SEQ
  config.model.hidden_size = 64
  config.model.num_heads = 2 if long_seq else 4
  config.model.puzzle_emb_ndim = 64 if config.model.puzzle_emb_ndim else 0
  config.model.halt_max_steps = min(config.model.halt_max_steps, 4)
  config.model.H_cycles = min(config.model.H_cycles, 2)
  config.model.L_cycles = min(config.model.L_cycles, 2)
  if data_overrides:
    config.data.builder_config.update(data_overrides)
    if "name" not in data_overrides:
      config.data.builder_config.name += "_runlocal"
  config.train.global_batch_size = 8 if long_seq else 32
  config.train.epochs = 2
  config.train.eval_interval = 2
  config.train.max_steps = 20
  config.train.lr_warmup_steps = 10
  config.train.log_every_steps = 5
  config.eval.global_batch_size = 16 if long_seq else 64
  config.eval.max_batches = 2
  return config


def sweep_named(name, sweeps):
  """`get_sweep(name)` of an experiment file whose sweeps are the dict `sweeps`."""
  if name not in sweeps:
    raise ValueError(f"unknown sweep {name!r}; choose one of {sorted(sweeps)}")
  return [dict(run) for run in sweeps[name]]


def parse_variant(arg, known):
  """'variant[,runlocal]' -> (variant or None, runlocal?); `known` is the file's VARIANTS
  ("" standing for the file's default)."""
  parts = [p for p in (arg or "").split(",") if p]
  variant = [p for p in parts if p != "runlocal"]
  if len(variant) > 1 or (variant and variant[0] not in known):
    choices = sorted(v for v in known if v)
    raise ValueError(f"unknown config variant {arg!r}; choose one of {choices} "
                     "(optionally with ,runlocal)")
  return (variant[0] if variant else None), "runlocal" in parts
