"""Time dataset builds: Sudoku-Extreme format from a 10k-row CSV, and ARC-1 from kaggle JSON.

    python benchmarks/build_data.py --arc_dir ../shared/data/arc --out /tmp/build_bench

The 10k-row 9x9 CSV is generated here (1000 generated puzzles x 10 augmentations, the format
of the official train.csv); the build then keeps a seeded 1000-puzzle subsample with 1000
augmentations each (the official recipe: 1,001,000 records) and the full 10k test split.
Prints a table; numbers go to BUILD_NOTES.md.
"""

import argparse
import pathlib
import shutil
import time

import ml_collections
import numpy as np

from trm_jax.data import datasets, sudoku, sudoku_solver


def _timed(fn):
  start = time.perf_counter()
  out = fn()
  return out, time.perf_counter() - start


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--arc_dir", default="")
  parser.add_argument("--arc_num_aug", type=int, default=1000)
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  shutil.rmtree(out, ignore_errors=True)
  rows = []

  raw = out / "sudoku_raw"
  raw.mkdir(parents=True)
  base, t_gen = _timed(lambda: sudoku_solver.generate(1000, 9, np.random.default_rng(0)))
  q, a = sudoku.augment_many(np.random.default_rng(1), base.questions, base.answers, 9, 10)
  big = sudoku.SudokuSet(q, a, np.zeros(len(q), np.float32), 9)
  sudoku.write_csv(raw / "train.csv", big)
  sudoku.write_csv(raw / "test.csv", big)
  rows.append(("generate 1000 9x9 puzzles (unique solution)", t_gen, ""))
  cfg = ml_collections.ConfigDict(dict(
      builder="sudoku", builder_config=dict(name="bench", size=9, subsample=1000, num_aug=1000,
                                            test_subsample=0, seed=0),
      manual_dir=str(raw), data_dir=str(out / "tfds"), generate=dict(kind="")))
  data, t = _timed(lambda: datasets.prepare(cfg))
  rows.append(("Sudoku: 10k-row CSV -> 1k x (1+1000 aug) train + 10k test", t,
               f"{len(data.train):,} + {len(data.test):,} records"))

  if args.arc_dir:
    cfg = ml_collections.ConfigDict(dict(
        builder="arc", builder_config=dict(name="bench", num_aug=args.arc_num_aug),
        manual_dir=args.arc_dir, data_dir=str(out / "tfds"), generate=dict(kind="")))
    data, t = _timed(lambda: datasets.prepare(cfg))
    rows.append((f"ARC-1 (training+evaluation+concept), {args.arc_num_aug} aug", t,
                 f"{len(data.train):,} + {len(data.test):,} records"))
  print("| build | seconds | size |")
  print("|---|---|---|")
  for name, seconds, size in rows:
    print(f"| {name} | {seconds:.1f} | {size} |")


if __name__ == "__main__":
  main()
