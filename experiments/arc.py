r"""ARC-AGI (official recipe: attention 7M, n=4; paper 44.6% / 7.8% pass@2).

  --config experiments/arc.py:arc1   ARC-AGI-1 training + evaluation + ConceptARC, test = evaluation
  --config experiments/arc.py:arc2   ARC-AGI-2 training2 + evaluation2 + ConceptARC, test = evaluation2
  --config experiments/arc.py:dis_compact  DIS on the ARC-AGI-1 data, d=256, 1 layer (0.8M; paper
                                           24.0% pass@2), the official DIS ARC script's recipe
  --config experiments/arc.py:dis_medium   DIS, d=512, 2 layers (7M; paper 40.0% pass@2)
  --config experiments/arc.py:hrm          HRM's official ARC-AGI-1 recipe (cfg_pretrain.yaml)
The kaggle-format JSON (arc-agi_<subset>_challenges.json / _solutions.json) must be in
--config.data.manual_dir. Append ,runlocal for a CPU check (few augmentations, tiny model).

Sweeps (python -m trm_jax.launch --config experiments/arc.py --sweep NAME[,runlocal]):
  official  the TRM recipe on ARC-AGI-1 and on ARC-AGI-2
  schemes   ARC-AGI-1 with TRM, DIS (the 7M medium recipe) and HRM
  dis       the two DIS recipes (compact 0.8M, medium 7M), 2 seeds each
"""

import sys, pathlib  # noqa: E401
sys.path.insert(0, str(pathlib.Path(__file__).parent))

import ml_collections  # noqa: E402

import common  # noqa: E402
from trm_jax import config as model_configs  # noqa: E402
from trm_jax import sweep  # noqa: E402


VARIANTS = ("arc1", "arc2", "dis_compact", "dis_medium", "hrm")


def get_config(arg=None):
  variant, local = common.parse_variant(arg, VARIANTS)
  variant = variant or "arc1"
  config = ml_collections.ConfigDict()
  config.model = model_configs.arc_attention()
  data = "arc2" if variant == "arc2" else "arc1"
  subsets = (("training", "evaluation", "concept") if data == "arc1"
             else ("training2", "evaluation2", "concept"))
  config.data = common.data_spec(
      "arc", dict(name=f"{data}_aug_1000", subsets=subsets,
                  test_set_name=subsets[1], num_aug=1000, seed=42))
  # Official command: arch.L_cycles=4 ema=True; cfg_pretrain.yaml: epochs 100000,
  # eval_interval 10000, lr 1e-4, puzzle_emb_lr 1e-2, weight_decay 0.1 (both).
  config.train = common.train_recipe()
  config.eval = common.eval_recipe(pass_ks=(1, 2, 5, 10, 100, 1000))
  if variant.startswith("dis_"):
    # train_arc_tiny_corrupt.py: N_sup 6, T=1, n=2, AdamW (0.9, 0.95), lr 1e-4 constant after 2k
    # warm-up, wd 0.1, puzzle-emb lr 1e-2 / wd 0.1, batch 512, 200k epochs, eval every 5k, no EMA.
    compact = variant == "dis_compact"
    common.dis(config.model, n_sup=6)
    config.model.hidden_size = 256 if compact else 512
    config.model.num_layers = 1 if compact else 2
    config.model.puzzle_emb_ndim = config.model.hidden_size
    config.train = common.train_recipe(global_batch_size=512, epochs=200_000, eval_interval=5_000,
                                       optimizer="adamw", ema=False)
    config.eval.global_batch_size = 512
  if variant == "hrm":  # sapientinc/HRM cfg_pretrain.yaml: the TRM recipe's values, no EMA
    common.hrm(config.model)
    config.train = common.hrm_train_recipe()
  config.mesh_shape = common.DEFAULT_MESH
  config.execution = common.execution()
  if local:  # every task, 4 augmentations instead of 1000
    config = common.runlocal(config, num_aug=4)
  return config


SWEEPS = {
    "official": sweep.axis("config", ["arc1", "arc2"]),
    "schemes": sweep.axis("config", ["arc1", "dis_medium", "hrm"]),
    "dis": sweep.product(sweep.axis("config", ["dis_compact", "dis_medium"]),
                         sweep.axis("train.seed", [0, 1])),
}


def get_sweep(name):
  return common.sweep_named(name, SWEEPS)
