r"""N-Queens 8x8 completion (the DIS paper's task: 7,200 train / 200 test, seq 64, vocab 3).

  --config experiments/nqueens.py            TRM with the official recursion, N_sup 16
  --config experiments/nqueens.py:dis        DIS, the official N-Queens DIS script (N_sup 8)
  --config experiments/nqueens.py:,runlocal  CPU check
The data is generated with the official DIS builder's seeds; no files needed.
"""

import sys, pathlib  # noqa: E401
sys.path.insert(0, str(pathlib.Path(__file__).parent))

import ml_collections  # noqa: E402

import common  # noqa: E402
from trm_jax import config as model_configs  # noqa: E402


VARIANTS = ("", "dis")


def get_config(arg=None):
  variant, local = common.parse_variant(arg, VARIANTS)
  config = ml_collections.ConfigDict()
  config.model = model_configs.model_config(seq_len=64, vocab_size=3, H_cycles=3, L_cycles=6)
  config.data = common.data_spec("nqueens", dict(name="8x8"))
  config.train = common.train_recipe(epochs=20_000, eval_interval=2_000, global_batch_size=512)
  config.eval = common.eval_recipe(global_batch_size=200)
  if variant == "dis":
    # queens/train_arc_tiny_corrupt_queens.py: N_sup 8, T=1, n=2, d=512, 2 layers, AdamATan2,
    # lr 1e-4 after 2k warm-up, wd 0.1, batch 768, 100k epochs, eval every 5k, no EMA.
    common.dis(config.model, n_sup=8)
    config.train = common.train_recipe(epochs=100_000, eval_interval=5_000, ema=False)
  config.mesh_shape = common.DEFAULT_MESH
  config.execution = common.execution()
  if local:  # the official generator and seeds, fewer boards
    config = common.runlocal(config, num_train=256, num_test=64)
  return config
