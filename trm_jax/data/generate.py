"""Write generated puzzles in the official CSV formats (offline use, tests, the CPU smoke run).

    python -m trm_jax.data.generate sudoku --size 6 --num_train 2000 --num_test 500 --out DIR
    python -m trm_jax.data.generate maze --side 15 --num_train 1000 --num_test 200 --out DIR

Writes DIR/train.csv and DIR/test.csv. Test puzzles never appear in the training file.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np

from trm_jax.data import maze, sudoku


def _split_unique(questions: np.ndarray, num_train: int, num_test: int, what: str):
  """Row indices of num_train + num_test distinct puzzles (first occurrences, in order)."""
  _, first = np.unique(questions, axis=0, return_index=True)
  keep = np.sort(first)
  if len(keep) < num_train + num_test:
    raise RuntimeError(f"only {len(keep)} distinct {what} puzzles were generated; "
                       f"{num_train + num_test} needed")
  return keep[:num_train], keep[num_train:num_train + num_test]


def sudoku_csvs(out_dir, size: int, num_train: int, num_test: int, seed: int = 0,
                min_backtracks: int = 0) -> tuple[pathlib.Path, pathlib.Path]:
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  # Over-generate a little: small boards repeat puzzles now and then.
  total = int((num_train + num_test) * 1.1) + 10
  data = sudoku.generate(total, size, np.random.default_rng(seed), min_backtracks)
  train, test = _split_unique(data.questions, num_train, num_test, f"{size}x{size} Sudoku")
  pick = lambda rows: sudoku.SudokuSet(data.questions[rows], data.answers[rows],
                                       data.ratings[rows], size)
  paths = out / "train.csv", out / "test.csv"
  sudoku.write_csv(paths[0], pick(train))
  sudoku.write_csv(paths[1], pick(test))
  return paths


def maze_csvs(out_dir, side: int, num_train: int, num_test: int, seed: int = 0,
              min_path_length: int = 0) -> tuple[pathlib.Path, pathlib.Path]:
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  total = int((num_train + num_test) * 1.1) + 10
  data = maze.generate(total, side, np.random.default_rng(seed), min_path_length)
  train, test = _split_unique(data.questions, num_train, num_test, f"{side}x{side} maze")
  pick = lambda rows: maze.MazeSet(data.questions[rows], data.answers[rows], data.ratings[rows],
                                   side)
  paths = out / "train.csv", out / "test.csv"
  maze.write_csv(paths[0], pick(train))
  maze.write_csv(paths[1], pick(test))
  return paths


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
