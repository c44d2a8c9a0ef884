"""From an experiment's `config.data` to built TFDS splits and their puzzle indices.

    config.data.builder         'sudoku' | 'maze' | 'arc' | 'nqueens'
    config.data.builder_config  fields of that builder's BuilderConfig (incl. its `name`)
    config.data.manual_dir      local source files (official CSV / kaggle JSON)
    config.data.data_dir        where TFDS datasets live
    config.data.generate        optional: {kind, size/side, num_train, num_test, seed,
                                min_difficulty}; writes the CSVs into manual_dir first when
                                they are not there (the CPU smoke run)
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import ml_collections
import tensorflow_datasets as tfds

from trm_jax.data import builders, generate
from trm_jax.data.pipeline import PuzzleIndex

BUILDERS = {
    "sudoku": (builders.Sudoku, builders.SudokuConfig),
    "maze": (builders.Maze, builders.MazeConfig),
    "nqueens": (builders.NQueens, builders.NQueensConfig),
    "arc": (builders.Arc, builders.ArcConfig),
}


@dataclasses.dataclass
class Prepared:
  train: Any  # random-access source of training records
  train_index: PuzzleIndex
  test: Any
  metadata: dict[str, Any]


def builder_for(data_cfg: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  if data_cfg.builder not in BUILDERS:
    raise ValueError(f"config.data.builder = {data_cfg.builder!r}: must be one of {sorted(BUILDERS)}")
  builder_cls, config_cls = BUILDERS[data_cfg.builder]
  fields = {f.name for f in dataclasses.fields(config_cls)}
  values = data_cfg.builder_config.to_dict()
  unknown = sorted(set(values) - fields)
  if unknown:
    raise ValueError(f"config.data.builder_config has unknown field(s) {unknown} for "
                     f"'{data_cfg.builder}'")
  return builder_cls(data_dir=data_cfg.data_dir, config=config_cls(**values),
                     file_format="array_record")


def _generate_sources(data_cfg) -> None:
  gen = data_cfg.generate
  manual = pathlib.Path(data_cfg.manual_dir)
  if (manual / "train.csv").is_file() and (manual / "test.csv").is_file():
    return
  if gen.kind == "sudoku":
    generate.sudoku_csvs(manual, gen.size, gen.num_train, gen.num_test, gen.seed,
                         gen.min_difficulty)
  elif gen.kind == "maze":
    generate.maze_csvs(manual, gen.side, gen.num_train, gen.num_test, gen.seed,
                       gen.min_difficulty)
  else:
    raise ValueError(f"config.data.generate.kind = {gen.kind!r}: must be 'sudoku' or 'maze'")


def prepare(data_cfg: ml_collections.ConfigDict, build: bool = True) -> Prepared:
  """Builds the dataset if needed (only where `build`; others wait for it) and opens it."""
  if data_cfg.get("generate") and data_cfg.generate.get("kind") and build:
    _generate_sources(data_cfg)
  builder = builder_for(data_cfg)
  if build:
    manual = data_cfg.manual_dir or None
    for name in builder.required_files():
      path = pathlib.Path(manual or ".") / name
      if manual is None or not path.is_file():
        raise FileNotFoundError(f"{path} not found: config.data.manual_dir must hold "
                                f"{builder.required_files()}")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
  sources = builder.as_data_source()
  metadata = dict(builder.info.metadata)
  return Prepared(sources["train"], PuzzleIndex.from_metadata(metadata, "train"),
                  sources["test"], metadata)
