r"""Sweeps: an experiment file's `get_sweep(name)` expanded into named, checked runs.

An experiment file declares its sweeps next to `get_config(arg)`:

    from trm_jax import sweep

    def get_sweep(name):
      if name == "lr_seed":
        return sweep.product(sweep.axis("config", ["smoke"]),
                             sweep.axis("train.lr", [1e-3, 3e-3]),
                             sweep.axis("train.seed", [0, 1, 2]))

A sweep is a list of runs, each a dict of overrides: dotted config keys (`train.lr`) to values,
plus the reserved key "config", the `get_config` argument of that run (default: the file's
default variant). `product` and `zip_` combine sweeps. `expand` turns one into `Run`s: a name
made of the overrides that differ between runs (`lr=0.001,seed=2`), a workdir
`root/<sweep>/<name>`, and the `python -m trm_jax.main` command, whose `--config.*` flags are
parsed by `check` exactly as `trm_jax.main` will parse them, so a typo fails before anything
launches. A run is resumed by launching it again: `trm_jax.main` resumes from its workdir.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import pathlib
import shlex
from typing import Any, Iterable, Sequence

import ml_collections

CONFIG_KEY = "config"  # a run's `get_config` argument (its variant), not a config field
RUNLOCAL = "runlocal"

Sweep = list[dict[str, Any]]


# ------------------------------------------------------------------------------ declaring --


def axis(key: str, values: Iterable[Any]) -> Sweep:
  """One run per value of `key`."""
  values = list(values)
  if not values:
    raise ValueError(f"sweep axis {key!r} has no values")
  return [{key: value} for value in values]


def product(*sweeps: Sweep) -> Sweep:
  """Every combination; the last sweep varies fastest."""
  return [_merge(combination) for combination in itertools.product(*sweeps)]


def zip_(*sweeps: Sweep) -> Sweep:
  """Runs taken together position by position (the sweeps must be equally long)."""
  lengths = [len(s) for s in sweeps]
  if len(set(lengths)) > 1:
    raise ValueError(f"zip_ of sweeps of different lengths {lengths}")
  return [_merge(runs) for runs in zip(*sweeps)]


def _merge(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
  merged = {}
  for run in runs:
    for key, value in run.items():
      if key in merged:
        raise ValueError(f"sweep key {key!r} is set twice in one run ({merged[key]!r} and "
                         f"{value!r})")
      merged[key] = value
  return merged


# ------------------------------------------------------------------------------ expanding --


@dataclasses.dataclass(frozen=True)
class Run:
  """One training run of a sweep: `python -m trm_jax.main` with these arguments."""
  name: str
  config: str  # FILE[:ARG], as `--config` takes it
  workdir: str
  flags: tuple[str, ...]  # --config.KEY=VALUE, the sweep's then the launcher's common ones
  overrides: tuple[tuple[str, Any], ...]  # the sweep's, as declared (checked against `flags`)

  def argv(self, python: str = "python") -> list[str]:
    return [python, "-m", "trm_jax.main", "--config", self.config, "--workdir", self.workdir,
            *self.flags]

  def command(self, python: str = "python") -> str:
    return shlex.join(self.argv(python))


def load_experiment(path: str | pathlib.Path):
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"experiment file {path}: not found")
  spec = importlib.util.spec_from_file_location(f"trm_jax_experiment_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def sweep_of(config_file: str | pathlib.Path, sweep_arg: str) -> tuple[str, Sweep, bool]:
  """(sweep name, its runs, runlocal?) from `config_file`'s `get_sweep`; `sweep_arg` is
  'name[,runlocal]'."""
  parts = [p for p in sweep_arg.split(",") if p]
  names = [p for p in parts if p != RUNLOCAL]
  if len(names) != 1:
    raise ValueError(f"--sweep {sweep_arg!r}: give one sweep name (optionally with ,runlocal)")
  module = load_experiment(config_file)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"{config_file} has no get_sweep(name): it declares no sweeps")
  runs = module.get_sweep(names[0])
  if not isinstance(runs, list) or not runs or not all(isinstance(r, dict) for r in runs):
    raise ValueError(f"{config_file}: get_sweep({names[0]!r}) must return a non-empty list of "
                     f"dicts of overrides, got {type(runs).__name__}")
  return names[0], runs, RUNLOCAL in parts


def format_value(value: Any) -> str:
  """A value as `--config.KEY=` takes it (and as it shows in a run's name)."""
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, (list, tuple)):
    return "(" + ", ".join(format_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
  return repr(value) if isinstance(value, float) else str(value)


def run_names(runs: Sweep) -> list[str]:
  """Names from the overrides that differ between runs (all of a lone run's), keys shortened to
  their last part where that stays unambiguous: 'lr=0.001,seed=2'."""
  keys = list(dict.fromkeys(k for run in runs for k in run))
  varying = [k for k in keys if len({format_value(r.get(k)) for r in runs}) > 1]
  shown = varying if len(runs) > 1 else keys
  last = [k.split(".")[-1] for k in shown]
  labels = {k: (short if last.count(short) == 1 else k) for k, short in zip(shown, last)}
  names = []
  for run in runs:
    parts = [f"{labels[k]}={format_value(run[k])}" for k in shown if k in run]
    names.append(",".join(parts).replace("/", "_").replace(" ", "") or "default")
  return names


def expand(config_file: str, sweep_name: str, runs: Sweep, root: str, runlocal: bool = False,
           common_flags: Sequence[str] = ()) -> list[Run]:
  """The sweep's runs with names, workdirs `root/<sweep>/<name>` and their main.py flags;
  `common_flags` (--config.KEY=VALUE) go to every run."""
  names = run_names(runs)
  seen = {}
  for i, name in enumerate(names):
    if name in seen:
      raise ValueError(f"sweep {sweep_name!r}: runs {seen[name]} and {i} are the same run "
                       f"({name})")
    seen[name] = i
  for flag in common_flags:
    if not flag.startswith("--config.") or "=" not in flag:
      raise ValueError(f"common override {flag!r}: expected --config.KEY=VALUE")
  expanded = []
  for name, run in zip(names, runs):
    overrides = {k: v for k, v in run.items() if k != CONFIG_KEY}
    arg = str(run.get(CONFIG_KEY, ""))
    if runlocal:
      arg = f"{arg},{RUNLOCAL}" if arg else RUNLOCAL
    expanded.append(Run(
        name=name,
        config=f"{config_file}:{arg}" if arg else str(config_file),
        workdir=f"{root.rstrip('/')}/{sweep_name}/{name}",
        flags=tuple(f"--config.{k}={format_value(v)}" for k, v in overrides.items())
        + tuple(common_flags),
        overrides=tuple(overrides.items())))
  return expanded


# ------------------------------------------------------------------------------- checking --


def check(run: Run) -> ml_collections.ConfigDict:
  """The run's config as `trm_jax.main` will build it, validated like `main.run` does before
  touching data; raises ValueError naming the run and the key or field."""
  from absl import flags
  from ml_collections import config_flags

  def parse(argv):
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values,
                                    lock_config=True, sys_argv=argv)
    flag_values(argv)
    return flag_values.config

  try:
    base = parse(["trm_jax.main", "--config", run.config])
  except Exception as error:  # the file's own errors (unknown variant, ...), named by it
    last_line = str(error).strip().splitlines()[-1]  # the config file's own error, not the trace
    raise ValueError(f"run {run.name!r}: --config {run.config}: {last_line}") from error
  for flag in run.flags:
    key = flag.removeprefix("--config.").split("=", 1)[0]
    _check_key(base, key, run.name)
  try:
    config = parse(["trm_jax.main", "--config", run.config, *run.flags])
  except flags.Error as error:  # e.g. "flag --config.train.lr=abc: could not convert ..."
    raise ValueError(f"run {run.name!r}: {error}") from error
  for key, value in run.overrides:
    parsed = _get(config, key)
    declared = tuple(value) if isinstance(value, list) else value
    if type(parsed) is not type(declared) and not (isinstance(parsed, float)
                                                   and type(declared) is int):
      raise ValueError(
          f"run {run.name!r}: override {key!r} = {value!r} ({type(value).__name__}) does not "
          f"match the config field's type {type(_get(base, key)).__name__}")
    if parsed != declared:
      raise ValueError(f"run {run.name!r}: override {key!r} = {value!r} reads back from the "
                       f"command line as {parsed!r}")
  _validate_experiment(config, run.name, run.workdir)
  return config


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
  for part in key.split("."):
    config = config[part]
  return config


def _check_key(config: ml_collections.ConfigDict, key: str, run_name: str) -> None:
  node, path = config, []
  for part in key.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      from trm_jax.experiment import moved_flag
      if moved := moved_flag([f"--config.{key}"]):
        raise ValueError(f"run {run_name!r}: {moved}")
      where = f"'{'.'.join(path)}'" if path else "the config"
      fields = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      raise ValueError(f"run {run_name!r}: unknown override key {key!r}: {where} has no field "
                       f"{part!r}" + (f" (fields: {', '.join(fields)})" if fields else ""))
    node, path = node[part], path + [part]


def _validate_experiment(config: ml_collections.ConfigDict, run_name: str, workdir: str
                         ) -> None:
  from trm_jax import inference
  from trm_jax.config import ModelSpec
  from trm_jax.experiment import data_folders, validate_experiment
  try:
    validate_experiment(config)
    inference.Strategy.from_config(config.eval).validate(ModelSpec.from_config(config.model))
    data_folders(ml_collections.ConfigDict(config.to_dict()), workdir)  # as the run will set them
  except ValueError as error:
    raise ValueError(f"run {run_name!r}: {error}") from error
