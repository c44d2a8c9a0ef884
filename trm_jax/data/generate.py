"""Write generated puzzles in the official CSV formats (offline use, tests, the CPU smoke run).

    python -m trm_jax.data.generate sudoku --size 6 --num_train 2000 --num_test 500 --out DIR
    python -m trm_jax.data.generate maze --side 15 --num_train 1000 --num_test 200 --out DIR

Writes DIR/train.csv and DIR/test.csv. Test puzzles never appear in the training file.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from etils import epath

from trm_jax.data import maze, sudoku, sudoku_solver


def _write_split(out_dir, data, make_set, write_csv, num_train: int, num_test: int,
                 what: str) -> tuple[epath.Path, epath.Path]:
  """Writes the first num_train + num_test distinct puzzles of `data` as train.csv / test.csv."""
  _, first = np.unique(data.questions, axis=0, return_index=True)
  keep = np.sort(first)
  if len(keep) < num_train + num_test:
    raise RuntimeError(f"only {len(keep)} distinct {what} puzzles were generated; "
                       f"{num_train + num_test} needed")
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  paths = out / "train.csv", out / "test.csv"
  for path, rows in zip(paths, (keep[:num_train], keep[num_train:num_train + num_test])):
    write_csv(path, make_set(data.questions[rows], data.answers[rows], data.ratings[rows]))
  return paths


def _oversample(num_train: int, num_test: int) -> int:
  # Small boards repeat puzzles now and then; generate a few extra.
  return int((num_train + num_test) * 1.1) + 10


def sudoku_csvs(out_dir, size: int, num_train: int, num_test: int, seed: int = 0,
                min_backtracks: int = 0) -> tuple[epath.Path, epath.Path]:
  data = sudoku_solver.generate(_oversample(num_train, num_test), size, np.random.default_rng(seed),
                         min_backtracks)
  return _write_split(out_dir, data, lambda q, a, r: sudoku.SudokuSet(q, a, r, size),
                      sudoku.write_csv, num_train, num_test, f"{size}x{size} Sudoku")


def maze_csvs(out_dir, side: int, num_train: int, num_test: int, seed: int = 0,
              min_path_length: int = 0) -> tuple[epath.Path, epath.Path]:
  data = maze.generate(_oversample(num_train, num_test), side, np.random.default_rng(seed),
                       min_path_length)
  return _write_split(out_dir, data, lambda q, a, r: maze.MazeSet(q, a, r, side),
                      maze.write_csv, num_train, num_test, f"{side}x{side} maze")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("kind", choices=["sudoku", "maze"])
  parser.add_argument("--size", type=int, default=9, help="Sudoku side (4, 6 or 9)")
  parser.add_argument("--side", type=int, default=30, help="maze side")
  parser.add_argument("--num_train", type=int, required=True)
  parser.add_argument("--num_test", type=int, required=True)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--min_difficulty", type=int, default=0,
                      help="Sudoku: solver backtracks; maze: shortest-path length")
  parser.add_argument("--out", required=True)
  args = parser.parse_args(argv)
  start = time.time()
  if args.kind == "sudoku":
    paths = sudoku_csvs(args.out, args.size, args.num_train, args.num_test, args.seed,
                        args.min_difficulty)
  else:
    paths = maze_csvs(args.out, args.side, args.num_train, args.num_test, args.seed,
                      args.min_difficulty)
  print(f"wrote {paths[0]} and {paths[1]} in {time.time() - start:.1f}s")


if __name__ == "__main__":
  main()
