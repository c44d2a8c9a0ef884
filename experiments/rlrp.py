r"""RLRP-style recursive latent refinement of a small causal LM (trm_jax/schemes/rlrp.py).

  --config experiments/rlrp.py:cpu     CPU run (about 19 minutes on 2 cores): hidden 128,
                                       2 causal blocks, K = 4, 3-digit additions and 2-digit
                                       multiplications (2,048 held out for test and 2,048
                                       for validation), the shipped text sample (10% of each
                                       file for test, 10% for validation), 3,000 steps
  --config experiments/rlrp.py:cpu_k1  the same with K = 1 (no refinement; same parameters,
                                       same data, steps and optimiser): the baseline (8 min)
  --config experiments/rlrp.py:accel   an accelerator run: hidden 512, 6 blocks, K = 8, bf16,
                                       5-digit additions and 3-digit multiplications
Append ,runlocal for a CPU check of the code path (20 steps). Options of the head and the
losses: --config.model.scheme_options.{K,head,step_embed,alpha,gradient,weights,rl_weight,
rl_span,penalty_weight,penalty_span,margin}; the routing ratio:
--config.data.builder_config.reasoning_ratio; own text:
--config.data.builder_config.text_files=DIR_OR_FILE. Per-step evaluation of a run:
python -m trm_jax.lm_eval --workdir DIR (validation; --split test once, for what was chosen);
choosing between settings on validation and testing the pick only:
python -m trm_jax.lm_eval --candidate A=DIR1,DIR2 --candidate B=DIR3,DIR4.
"""

import sys, pathlib  # noqa: E401
sys.path.insert(0, str(pathlib.Path(__file__).parent))

import ml_collections  # noqa: E402

import common  # noqa: E402
from trm_jax import config as model_configs  # noqa: E402

VARIANTS = ("cpu", "cpu_k1", "accel")


def get_config(arg=None):
  variant, local = common.parse_variant(arg, VARIANTS)
  variant = variant or "cpu"
  accel = variant == "accel"
  seq_len = 64 if accel else 32
  config = ml_collections.ConfigDict()
  config.model = model_configs.model_config(
      seq_len=seq_len, vocab_size=259, hidden_size=512 if accel else 128,
      num_heads=8 if accel else 4, num_layers=6 if accel else 2, expansion=4.0,
      pos_encodings="rope", puzzle_emb_ndim=0, puzzle_emb_len=0, scheme="rlrp",
      halt_max_steps=1, halt_exploration_prob=0.0, loss_type="softmax",
      compute_dtype="bfloat16" if accel else "float32")
  # The improvement penalty is off (weight 0) and training runs 3,000 steps: chosen on the
  # validation split between penalty off / on (weight 1, margin 0.1) and stopping at 1,500 /
  # 3,000 steps, two seeds each (step-4 exact 0.587 off, 0.419 on; BUILD_NOTES "RLRP",
  # thirteenth session, benchmarks/results/rlrp_selection/).
  # To turn it on: penalty_weight=1.0 (margin 0.1 over the answer digits); it is an extra
  # answer-CE term for K = 1 too, so give the K = 1 baseline the same.
  config.model.scheme_options = dict(
      K=8 if accel else (1 if variant == "cpu_k1" else 4), head="attention", step_embed=False,
      alpha=0.5, gradient="full", weights="linear", rl_weight=1.0, rl_span="answer",
      penalty_weight=0.0, penalty_span="answer", margin=0.1)
  config.data = common.data_spec("lm", dict(
      name=f"rlrp_{'accel' if accel else 'cpu'}", seq_len=seq_len,
      num_train=200_000 if accel else 20_000, num_test=2048, num_validation=2048,
      add_digits=5 if accel else 3, mul_digits=3 if accel else 2, seed=0, text_files=(),
      test_fraction=0.1, validation_fraction=0.1, reasoning_ratio=0.5))
  # Validation (problems after the test ones in the seeded stream, and the text windows before
  # each file's test tail): what periodic evaluations and every choice read; test is read once.
  batch = 256 if accel else 64
  # 3,000 CPU steps (chosen on validation, above: the 1,500-step checkpoints reach 0.26)
  steps = 20_000 if accel else 3_000
  config.train = common.train_recipe(
      global_batch_size=batch, epochs=1000, eval_interval=1000, max_steps=steps,
      lr=1e-3 if not accel else 3e-4, lr_warmup_steps=200, lr_min_ratio=0.1,
      optimizer="adamw", weight_decay=0.01, puzzle_emb_lr=1e-2, ema=False,
      log_every_steps=100, checkpoint_every_steps=500 if not accel else 5000)
  config.eval = common.eval_recipe(global_batch_size=256 if not accel else 1024)
  config.mesh_shape = common.DEFAULT_MESH
  config.execution = common.execution()
  if local:
    config = common.runlocal(config, num_train=512, num_test=64, num_validation=64)
    config.model.num_layers = 2
  return config
