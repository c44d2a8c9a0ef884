r"""Maze-Hard 30x30 (official recipe: attention, n=4; paper 85.3% exact).

  --config experiments/maze.py            needs the official train.csv / test.csv in
                                          --config.data.manual_dir
  --config experiments/maze.py:aug        with the 8 dihedral augmentations (the paper's setting)
  --config experiments/maze.py:hrm        HRM's official Maze-Hard recipe
  --config experiments/maze.py:,runlocal  CPU check: 64 of the training mazes, 20 steps
`python -m trm_jax.data.generate maze --side 30` writes mazes in the official format.
"""

import sys, pathlib  # noqa: E401
sys.path.insert(0, str(pathlib.Path(__file__).parent))

import ml_collections  # noqa: E402

import common  # noqa: E402
from trm_jax import config as model_configs  # noqa: E402


VARIANTS = ("", "aug", "hrm")  # "": the official default, no augmentation


def get_config(arg=None):
  variant, local = common.parse_variant(arg, VARIANTS)
  config = ml_collections.ConfigDict()
  config.model = model_configs.maze_attention()
  config.data = common.data_spec(
      "maze", dict(name="hard_30x30_aug8" if variant == "aug" else "hard_30x30", side=30,
                   dihedral_aug=variant == "aug", subsample=0))
  # Official command: epochs=50000 eval_interval=5000 lr=1e-4 puzzle_emb_lr=1e-4
  # weight_decay=1.0 puzzle_emb_weight_decay=1.0 arch.L_cycles=4 ema=True.
  config.train = common.train_recipe(epochs=50_000, eval_interval=5_000, lr=1e-4,
                                     puzzle_emb_lr=1e-4, weight_decay=1.0,
                                     puzzle_emb_weight_decay=1.0, ema=True)
  config.eval = common.eval_recipe()
  if variant == "hrm":
    # sapientinc/HRM README: epochs=20000 eval_interval=2000 lr=1e-4 puzzle_emb_lr=1e-4
    # weight_decay=1.0 puzzle_emb_weight_decay=1.0.
    common.hrm(config.model)
    config.train = common.hrm_train_recipe(epochs=20_000, eval_interval=2_000, lr=1e-4,
                                           puzzle_emb_lr=1e-4, weight_decay=1.0,
                                           puzzle_emb_weight_decay=1.0)
  config.mesh_shape = common.DEFAULT_MESH
  config.execution = common.execution()
  if local:  # 64 of the official 30x30 training mazes, as the full recipe reads them
    config = common.runlocal(config, subsample=64)
  return config
