"""From an experiment's `config.data` to built TFDS splits and their puzzle indices.

    config.data.builder         'sudoku' | 'maze' | 'arc' | 'nqueens' (TFDS builders), or
                                'lm' (in-memory corpora for a language model, e.g. RLRP's; lm.py)
    config.data.builder_config  fields of that builder's BuilderConfig (incl. its `name`)
    config.data.manual_dir      source files (official CSV / kaggle JSON); local or gs://
    config.data.data_dir        where TFDS datasets live; a local directory (check_data_dir)
    config.data.generate        optional: {kind, size/side, num_train, num_test, seed,
                                min_difficulty}; writes the CSVs into manual_dir first when
                                they are not there (the CPU smoke run)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import uuid
from typing import Any

import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from trm_jax import paths
from trm_jax.data import builders, generate, lm
from trm_jax.data.pipeline import Prepared, PuzzleIndex

BUILDERS = {
    "sudoku": (builders.Sudoku, builders.SudokuConfig),
    "maze": (builders.Maze, builders.MazeConfig),
    "nqueens": (builders.NQueens, builders.NQueensConfig),
    "arc": (builders.Arc, builders.ArcConfig),
}


# What config.data.generate writes into manual_dir (trm_jax/data/generate.py).
GENERATED_FILES = ("train.csv", "test.csv")

# Builders whose records are made in memory from the config (nothing built on disk).
IN_MEMORY = {lm.BUILDER: lm.prepare}


def _config_values(config) -> dict[str, Any]:
  """A builder config's data fields (what decides the records), without TFDS's bookkeeping."""
  skip = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)} - {"name"}
  return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
          if f.name not in skip}


def builder_config_for(data_cfg: ml_collections.ConfigDict):
  """`config.data.builder_config` as the builder's config object.

  A name the builder predefines (e.g. Sudoku's 'extreme_1k_aug_1000') selects that predefined
  config, and its values must match it (a validation split, `validation_fraction` F > 0,
  makes it the custom config '<name>_valF': the training split is not the official one); TFDS refuses a second config object under a predefined
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
  if values.get("validation_fraction"):
    # A validation split changes the training split: another dataset, in a folder of its own.
    seed = values.get("validation_seed", 0)
    values["name"] = f"{values['name']}_val{values['validation_fraction']:g}" + (
        f"s{seed}" if seed else "")
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
  """Writes the generated CSVs into manual_dir unless they are there. Every process of a
  multi-host run does this (the puzzles are a function of the seed), often into one shared
  folder (<workdir>/raw): each writes into a folder of its own and renames the finished files
  into place, so that no process ever reads another's half-written file."""
  gen = data_cfg.generate
  manual = epath.Path(data_cfg.manual_dir)
  if all((manual / name).is_file() for name in GENERATED_FILES):
    return
  if gen.kind not in ("sudoku", "maze"):
    raise ValueError(f"config.data.generate.kind = {gen.kind!r}: must be 'sudoku' or 'maze'")
  private = manual / f".generating-{uuid.uuid4().hex}"
  try:
    if gen.kind == "sudoku":
      generate.sudoku_csvs(private, gen.size, gen.num_train, gen.num_test, gen.seed,
                           gen.min_difficulty)
    else:
      generate.maze_csvs(private, gen.side, gen.num_train, gen.num_test, gen.seed,
                         gen.min_difficulty)
    for name in GENERATED_FILES:
      (private / name).replace(manual / name)  # atomic; replaces another process's equal file
  finally:
    if private.exists():
      private.rmtree()


def prepare(data_cfg: ml_collections.ConfigDict) -> Prepared:
  """Builds the dataset into data.data_dir unless it is there, and opens it.

  Several processes may prepare into one (shared) data_dir at once: TFDS builds into a
  temporary folder of its own and renames it into place, and a process whose rename finds
  the dataset already there (put by another, from the same sources) opens that one.
  """
  if data_cfg.builder in IN_MEMORY:
    return IN_MEMORY[data_cfg.builder](data_cfg)
  if data_cfg.get("generate") and data_cfg.generate.get("kind"):
    _generate_sources(data_cfg)
  builder = builder_for(data_cfg)
  if not builder.is_prepared():
    check_sources(data_cfg, builder)
    try:
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=data_cfg.manual_dir))
    except OSError:
      builder = builder_for(data_cfg)  # afresh: the failed one's info names its temporary folder
      if not builder.is_prepared():
        raise
  sources = builder.as_data_source()
  metadata = dict(builder.info.metadata)
  return Prepared(sources["train"], PuzzleIndex.from_metadata(metadata, "train"),
                  sources["test"], metadata, sources.get("validation"))


def prepare_on_every_host(data_cfg: ml_collections.ConfigDict) -> Prepared:
  """The run's dataset on every process of a multi-host run: each builds it into its own
  data.data_dir where it is not yet (the builders are deterministic functions of the config
  and of the files in data.manual_dir), so the hosts of a pod need no disk they all see (a
  shared data_dir works too: `prepare`); then all compare `fingerprint`s, and a failure or a
  difference on any host stops all of them, naming it (`multihost.on_every_host`)."""
  from trm_jax import multihost
  return multihost.on_every_host(
      f"dataset {data_cfg.builder}/{data_cfg.builder_config.name} (each host builds its own "
      "from data.manual_dir: every host needs the same files and trm_jax code)",
      lambda: prepare(data_cfg), fingerprint)


def fingerprint(data: Prepared, samples: int = 8) -> dict[str, Any]:
  """What a run reads, summarised so that the processes of a multi-host run, each of which
  built its own copy, can check they read the same: records per split and a hash of the
  metadata (shapes and puzzle index) and of `samples` records spread over each split.
  Equal copies give equal fingerprints; a difference outside the sampled records can go
  unseen."""
  digest = hashlib.sha256(json.dumps(data.metadata, sort_keys=True, default=str).encode())
  records = {}
  for split, source in (("train", data.train), ("test", data.test),
                        ("validation", data.validation)):
    if source is None:
      continue
    records[split] = n = len(source)
    for index in sorted({int(i) for i in np.linspace(0, n - 1, samples)} if n else ()):
      for key, value in sorted(source[index].items()):
        value = np.asarray(value)
        digest.update(f"{split}/{index}/{key}/{value.dtype}/{value.shape}".encode())
        digest.update(value.tobytes())
  return {"records": records, "sha256": digest.hexdigest()}
