r"""Build (or check) the TFDS dataset of an experiment config without training.

    python -m trm_jax.data.build --config experiments/sudoku.py:mlp \
        --config.data.manual_dir=data/sudoku-extreme --data_dir ~/tensorflow_datasets

Then point training at the same place with --config.data.data_dir.
"""

import time

from absl import app, flags
from ml_collections import config_flags

from trm_jax.data import datasets

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file[:variant]")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data directory")


def main(argv):
  del argv
  from trm_jax import console
  console.quiet_unless_verbose()
  cfg = _CONFIG.value
  cfg.data.data_dir = _DATA_DIR.value
  start = time.time()
  data = datasets.prepare(cfg.data)
  print(f"{cfg.data.builder}/{cfg.data.builder_config.name} in {_DATA_DIR.value}: "
        f"{len(data.train)} train records ({data.train_index.num_groups} groups, "
        f"{data.train_index.epoch_length} per epoch), {len(data.test)} test records, "
        f"seq_len {data.metadata['seq_len']}, vocab {data.metadata['vocab_size']}, "
        f"{data.metadata['num_puzzle_identifiers']} puzzle ids; {time.time() - start:.1f}s")


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "data_dir"])
  app.run(main)
