r"""Sudoku experiments.

  --config experiments/sudoku.py:mlp     official Sudoku-Extreme recipe, mlp_t (paper: 87.4%)
  --config experiments/sudoku.py:att     official Sudoku-Extreme recipe, attention (paper: 74.7%)
  --config experiments/sudoku.py:smoke   CPU smoke run: generated 6x6 Sudoku, a few minutes
  --config experiments/sudoku.py:dis_smoke  the same run trained with DIS (T=1, n=2, N_sup 6)
  --config experiments/sudoku.py:hrm        HRM's official Sudoku-Extreme recipe (27M, H/L 4+4)
  --config experiments/sudoku.py:hrm_smoke  the smoke run with HRM's recursion (H/L levels of 2)
Append ,runlocal to shrink any of them for a CPU check (same builder and file format, a small
slice of the data, 20 steps). Sudoku-Extreme needs the official train.csv / test.csv in
--config.data.manual_dir (`python -m trm_jax.data.generate sudoku --size 9` writes puzzles in
that format).

Sweeps (python -m trm_jax.launch --config experiments/sudoku.py --sweep NAME[,runlocal]):
  smoke     the smoke run, lr x seed (2 x 3 runs; CPU-sized)
  schemes   the smoke run with TRM, DIS and HRM's recursion, 2 seeds each
  official  the two official Sudoku-Extreme recipes (mlp_t and attention)
  cycles    the official mlp_t recipe over T (H_cycles) x n (L_cycles); the paper's is T=3, n=6
"""

import sys, pathlib  # noqa: E401
sys.path.insert(0, str(pathlib.Path(__file__).parent))

import ml_collections  # noqa: E402

import common  # noqa: E402
from trm_jax import config as model_configs  # noqa: E402
from trm_jax import sweep  # noqa: E402


VARIANTS = ("mlp", "att", "hrm", "smoke", "dis_smoke", "hrm_smoke")


def get_config(arg=None):
  variant, local = common.parse_variant(arg, VARIANTS)
  variant = variant or "mlp"
  config = ml_collections.ConfigDict()
  if variant in ("smoke", "dis_smoke", "hrm_smoke"):
    # 6x6 Sudoku generated on the fly; 200 of the 2,000 training puzzles (and their
    # augmentations) held out for validation; held-out test puzzles, read once at the end.
    config.model = model_configs.model_config(
        seq_len=36, vocab_size=8, hidden_size=64, num_heads=4, expansion=4.0, mlp_t=True,
        pos_encodings="none", puzzle_emb_ndim=64, puzzle_emb_len=1, H_cycles=2, L_cycles=2,
        halt_max_steps=4, halt_exploration_prob=0.1, compute_dtype="float32")
    config.data = common.data_spec(
        "sudoku", dict(name="generated_6x6", size=6, subsample=0, num_aug=20, test_subsample=0,
                       seed=0, validation_fraction=0.1),
        generate=dict(kind="sudoku", size=6, num_train=2000, num_test=500, seed=0,
                      min_difficulty=0))
    config.train = common.train_recipe(
        global_batch_size=128, epochs=50, eval_interval=25, lr=3e-3, lr_warmup_steps=100,
        weight_decay=0.1, puzzle_emb_lr=1e-2, puzzle_emb_weight_decay=0.1, ema=False,
        log_every_steps=50, keep_best_checkpoints=1)
    config.eval = common.eval_recipe(global_batch_size=500)
    if variant == "dis_smoke":  # the same data, network and optimiser, trained with DIS
      common.dis(config.model, n_sup=6)
    if variant == "hrm_smoke":  # the same, with HRM's two levels (2 blocks each, as TRM's net)
      common.hrm(config.model, layers=2)
  else:
    preset = model_configs.sudoku_mlp_t if variant == "mlp" else model_configs.sudoku_attention
    config.model = preset()
    config.data = common.data_spec(
        "sudoku", dict(name="extreme_1k_aug_1000", size=9, subsample=1000, num_aug=1000,
                       test_subsample=0, seed=0))
    # Official command: epochs=50000 eval_interval=5000 lr=1e-4 puzzle_emb_lr=1e-4
    # weight_decay=1.0 puzzle_emb_weight_decay=1.0 ema=True.
    config.train = common.train_recipe(epochs=50_000, eval_interval=5_000, lr=1e-4,
                                       puzzle_emb_lr=1e-4, weight_decay=1.0,
                                       puzzle_emb_weight_decay=1.0, ema=True)
    config.eval = common.eval_recipe()
    if variant == "hrm":
      # sapientinc/HRM README (8 GPUs): epochs=20000 eval_interval=2000 lr=1e-4
      # puzzle_emb_lr=1e-4 weight_decay=1.0 puzzle_emb_weight_decay=1.0; batch 768; RoPE.
      common.hrm(config.model)
      config.train = common.hrm_train_recipe(epochs=20_000, eval_interval=2_000, lr=1e-4,
                                             puzzle_emb_lr=1e-4, weight_decay=1.0,
                                             puzzle_emb_weight_decay=1.0)
  config.mesh_shape = common.DEFAULT_MESH
  config.execution = common.execution()
  if local and variant in ("smoke", "dis_smoke", "hrm_smoke"):
    config = common.runlocal(config)  # already generated, small data
  elif local:  # a slice of the official CSVs, as the full recipe reads them
    config = common.runlocal(config, subsample=256, num_aug=4, test_subsample=128)
  return config


SWEEPS = {
    "smoke": sweep.product(sweep.axis("config", ["smoke"]),
                           sweep.axis("train.lr", [1e-3, 3e-3]),
                           sweep.axis("train.seed", [0, 1, 2])),
    "schemes": sweep.product(sweep.axis("config", ["smoke", "dis_smoke", "hrm_smoke"]),
                             sweep.axis("train.seed", [0, 1])),
    "official": sweep.axis("config", ["mlp", "att"]),
    "cycles": sweep.product(sweep.axis("config", ["mlp"]),
                            sweep.axis("model.H_cycles", [2, 3]),
                            sweep.axis("model.L_cycles", [4, 6])),
}


def get_sweep(name):
  return common.sweep_named(name, SWEEPS)
