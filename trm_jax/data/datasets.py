"""From an experiment's `config.data` to built TFDS splits and their puzzle indices.

    config.data.builder         'sudoku' | 'maze' | 'arc' | 'nqueens' (TFDS builders), or
                                'rlrp' (in-memory corpora for the RLRP language model, lm.py)
    config.data.builder_config  fields of that builder's BuilderConfig (incl. its `name`)
    config.data.manual_dir      source files (official CSV / kaggle JSON); local or gs://
    config.data.data_dir        where TFDS datasets live; a local directory (check_data_dir)
    config.data.generate        optional: {kind, size/side, num_train, num_test, seed,
                                min_difficulty}; writes the CSVs into manual_dir first when
                                they are not there (the CPU smoke run)
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
import tensorflow_datasets as tfds
from etils import epath

from trm_jax import paths
from trm_jax.data import builders, generate, lm
from trm_jax.data.pipeline import PuzzleIndex, RoutedIndex

BUILDERS = {
    "sudoku": (builders.Sudoku, builders.SudokuConfig),
    "maze": (builders.Maze, builders.MazeConfig),
    "nqueens": (builders.NQueens, builders.NQueensConfig),
    "arc": (builders.Arc, builders.ArcConfig),
}


# Builders whose records are made in memory from the config (nothing built on disk).
IN_MEMORY = {"rlrp": lm.prepare}


@dataclasses.dataclass
class Prepared:
  train: Any  # random-access source of training records
  train_index: PuzzleIndex | RoutedIndex
  test: Any
  metadata: dict[str, Any]


def _config_values(config) -> dict[str, Any]:
  """A builder config's data fields (what decides the records), without TFDS's bookkeeping."""
  skip = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)} - {"name"}
  return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
          if f.name not in skip}


def builder_config_for(data_cfg: ml_collections.ConfigDict):
  """`config.data.builder_config` as the builder's config object.

  A name the builder predefines (e.g. Sudoku's 'extreme_1k_aug_1000') selects that predefined
  config, and its values must match it; TFDS refuses a second config object under a predefined
  name, and two datasets with different contents in one directory would be worse. Any other
  name is a custom config.
  """
  if data_cfg.builder not in BUILDERS:
    raise ValueError(f"config.data.builder = {data_cfg.builder!r}: must be one of "
                     f"{sorted(BUILDERS) + sorted(IN_MEMORY)}")
  builder_cls, config_cls = BUILDERS[data_cfg.builder]
  fields = {f.name for f in dataclasses.fields(config_cls)}
  values = data_cfg.builder_config.to_dict()
  unknown = sorted(set(values) - fields)
  if unknown:
    raise ValueError(f"config.data.builder_config has unknown field(s) {unknown} for "
                     f"'{data_cfg.builder}'")
  if not values.get("name"):
    raise ValueError("config.data.builder_config.name is empty: it names the built dataset's "
                     "directory")
  for name, value in values.items():
    if isinstance(value, list):  # ConfigDict.to_dict keeps tuples, the command line gives lists
      values[name] = tuple(value)
  requested = config_cls(**values)
  predefined = builder_cls.builder_configs.get(requested.name)
  if predefined is None:
    return requested
  wanted, fixed = _config_values(requested), _config_values(predefined)
  differ = {k: (wanted[k], fixed[k]) for k in wanted if wanted[k] != fixed[k]}
  if differ:
    detail = ", ".join(f"{k}={v!r} (predefined: {p!r})" for k, (v, p) in sorted(differ.items()))
    raise ValueError(
        f"config.data.builder_config.name = {requested.name!r} is a predefined "
        f"'{data_cfg.builder}' config, but {detail}: give config.data.builder_config.name a "
        f"new name for a dataset with other contents")
  return predefined


def check_data_dir(data_cfg: ml_collections.ConfigDict, defaulted: bool = False) -> None:
  """Raises ValueError naming data.data_dir when it is a URL (gs://): the array_record files
  of a TFDS dataset are written and read by array_record's C++ code (TFDS's writer, grain's
  reader), which opens local files only. `defaulted`: the value is the workdir's tfds folder."""
  if data_cfg.builder in IN_MEMORY or not data_cfg.data_dir:
    return
  if paths.is_remote(data_cfg.data_dir):
    default = " (the default, <workdir>/tfds)" if defaulted else ""
    raise ValueError(
        f"config field 'data.data_dir' = {data_cfg.data_dir!r}{default}: TFDS datasets are "
        "array_record files, which array_record's C++ writer and reader open on the local "
        "filesystem only; give a local directory (--config.data.data_dir=DIR; the workdir and "
        "data.manual_dir may stay on the bucket)")


def builder_for(data_cfg: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  check_data_dir(data_cfg)
  config = builder_config_for(data_cfg)
  return BUILDERS[data_cfg.builder][0](data_dir=data_cfg.data_dir or None, config=config,
                     file_format="array_record")


def check_sources(data_cfg: ml_collections.ConfigDict, builder) -> None:
  """Raises FileNotFoundError naming config.data.manual_dir and the files it must hold."""
  required = builder.required_files()
  if not required:
    return
  what = f"the '{data_cfg.builder}/{builder.builder_config.name}' dataset is built from"
  if not data_cfg.manual_dir:
    raise FileNotFoundError(
        f"config.data.manual_dir is not set: {what} files {required} "
        f"({builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}); pass "
        f"--config.data.manual_dir=DIR with DIR holding them")
  manual = epath.Path(data_cfg.manual_dir)
  missing = [name for name in required if not (manual / name).is_file()]
  if missing:
    raise FileNotFoundError(
        f"config.data.manual_dir = {str(manual)!r} lacks {missing}: {what} {required} "
        f"({builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()})")


def _generate_sources(data_cfg) -> None:
  gen = data_cfg.generate
  manual = epath.Path(data_cfg.manual_dir)
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
  if data_cfg.builder in IN_MEMORY:
    return IN_MEMORY[data_cfg.builder](data_cfg)
  if data_cfg.get("generate") and data_cfg.generate.get("kind") and build:
    _generate_sources(data_cfg)
  builder = builder_for(data_cfg)
  if not build and not builder.is_prepared():
    raise FileNotFoundError(
        f"dataset '{data_cfg.builder}/{builder.builder_config.name}' is not under "
        f"config.data.data_dir = {data_cfg.data_dir!r} on this host, where process 0 built it: "
        "on several hosts data.data_dir must be a directory every host sees (a shared mount)")
  if build and not builder.is_prepared():
    check_sources(data_cfg, builder)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=data_cfg.manual_dir))
  sources = builder.as_data_source()
  metadata = dict(builder.info.metadata)
  return Prepared(sources["train"], PuzzleIndex.from_metadata(metadata, "train"),
                  sources["test"], metadata)
