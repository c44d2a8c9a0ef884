"""A training run's directory, read back: its resolved config and its evaluation weights.

    run = trm_jax.load("/tmp/smoke")            # a workdir, its checkpoints/ or one step's dir
    run = trm_jax.load("gs://BUCKET/runs/x")    # on a bucket as well (trm_jax/paths.py)
    run.params, run.model_config, run.config, run.step

Nothing of the training run is rebuilt (no optimiser, no data stream, no example batch): the
config comes from the checkpoint itself (every checkpoint holds the resolved config), or for
checkpoints written before that from the workdir's config.json (written by `trm_jax.main`),
the weights from the newest complete checkpoint (or the step asked for), read from the
checkpoint's own metadata onto this process's first device (or into a mesh's shardings). `params` are what evaluation uses:
the EMA weights when the run keeps an EMA.

    upgrade_config(saved)          # a config saved by an earlier version, in today's layout
    config_differences(old, new)   # {"train.lr": (0.003, 0.5), ...}: what a resume would change
    record_config_change(workdir, step, differences)   # appended to config_changes.jsonl
    code_version()                 # the trm_jax code a run used: git commit (+dirty) or version
    record_provenance(workdir, step)   # appended to provenance.jsonl at each (re)start
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
from typing import Any

import jax
import ml_collections
from etils import epath
from orbax.checkpoint import v1 as ocp

from trm_jax import checkpoint as checkpoint_lib, paths, sharding as sharding_lib
from trm_jax import train as train_lib
from trm_jax.config import ModelSpec
from trm_jax.kernels import execution

CONFIG_FILE = "config.json"
CONFIG_CHANGES_FILE = "config_changes.jsonl"
PROVENANCE_FILE = "provenance.jsonl"
ABSENT = "<absent>"
# On gs:// (no atomic rename) Orbax writes a step's directory in place and marks it complete
# with this file last.
COMMIT_SUCCESS_FILE = "commit_success.txt"


@dataclasses.dataclass(frozen=True)
class Run:
  workdir: epath.Path
  config: ml_collections.ConfigDict        # the resolved experiment config
  model_config: ml_collections.ConfigDict  # with the dataset's shapes filled in
  params: dict[str, Any]                   # evaluation weights
  step: int                                # the checkpoint's training step
  checkpoint: epath.Path


def _complete(step_dir: epath.Path) -> bool:
  if not (step_dir / "state").is_dir():
    return False
  return not os.fspath(step_dir).startswith("gs://") or (step_dir / COMMIT_SUCCESS_FILE).exists()


def checkpoint_steps(checkpoints: paths.PathLike) -> list[int]:
  """The steps of the complete checkpoints in a checkpoints directory (none if it is absent)."""
  checkpoints = epath.Path(checkpoints)
  if not checkpoints.is_dir():
    return []
  return sorted(int(p.name) for p in checkpoints.iterdir()
                if p.name.isdigit() and _complete(p))


def _locate(path: paths.PathLike, step: int | None) -> tuple[epath.Path, epath.Path]:
  """(workdir, checkpoint step directory) for a workdir, a checkpoints dir or a step dir."""
  path = paths.absolute(path)
  if not path.exists():
    raise FileNotFoundError(f"{path}: no such run directory or checkpoint")
  if (path / "state").is_dir():  # a step directory
    return path.parent.parent, path
  checkpoints = path / "checkpoints" if (path / CONFIG_FILE).exists() else path
  steps = checkpoint_steps(checkpoints)
  if not steps:
    raise FileNotFoundError(f"{checkpoints}: no checkpoint (train first, or point at a run's "
                            "workdir)")
  if step is not None and step not in steps:
    raise FileNotFoundError(f"{checkpoints}: no checkpoint of step {step} (have {steps})")
  chosen = checkpoints / str(step if step is not None else steps[-1])
  return checkpoints.parent, chosen


def load(path: paths.PathLike, step: int | None = None, *,
         mesh: jax.sharding.Mesh | None = None) -> Run:
  """The run at `path` (workdir, its checkpoints directory, or one checkpoint's directory).

  With `mesh` the weights are read straight into that mesh's shardings (the training state's
  rules, `trm_jax.sharding`), as every process of a multi-process run must; without, onto this
  process's first local device.
  """
  workdir, checkpoint = _locate(path, step)
  saved = checkpoint_lib.load_config(checkpoint)
  if saved is None:
    config_path = workdir / CONFIG_FILE
    if not config_path.exists():
      raise FileNotFoundError(f"{checkpoint} holds no config and {config_path} is missing; a "
                              "run directory written by `python -m trm_jax.main` has one")
    try:
      saved = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
      raise ValueError(f"{config_path}: not valid JSON ({error})") from None
  config = ml_collections.ConfigDict(upgrade_config(saved))
  model_config = ml_collections.ConfigDict(config.model.to_dict())
  ModelSpec.from_config(model_config)  # validates, naming a bad field

  metadata = ocp.metadata(checkpoint, checkpointable_name="state").metadata
  shapes = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), metadata)
  if mesh is None:
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shardings = jax.tree.map(lambda _: device, shapes)
  else:
    shardings = sharding_lib.tree_shardings(mesh, shapes)
  abstract = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s),
                          shapes, shardings)
  state = ocp.load(checkpoint, abstract, checkpointable_name="state")
  return Run(workdir=workdir, config=config, model_config=model_config,
             params=train_lib.eval_params(state), step=int(checkpoint.name),
             checkpoint=checkpoint)


def upgrade_config(saved: dict[str, Any]) -> dict[str, Any]:
  """A resolved config as any version saved it, in this version's layout: the model fields
  `matmul` and `attention` of runs saved before issue 29 become the run's `execution`
  settings (a kernel choice, not part of the model)."""
  model = dict(saved.get("model", {}))
  moved = {name: model.pop(name) for name in execution.FORMER_MODEL_FIELDS if name in model}
  if not moved:
    return saved
  return {**saved, "model": model, "execution": {**moved, **saved.get("execution", {})}}


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
  """{dotted field: (old value, new value)} for every field that differs between two resolved
  configs as config.json holds them (JSON values: compare `json.loads(json.dumps(...))` of a
  config); a field only one of them has is `ABSENT` in the other."""
  differences = {}
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key, ABSENT), new.get(key, ABSENT)
    if isinstance(a, dict) and isinstance(b, dict):
      differences.update({f"{key}.{field}": change
                          for field, change in config_differences(a, b).items()})
    elif a != b:
      differences[key] = (a, b)
  return differences


def record_config_change(workdir: paths.PathLike, step: int,
                         differences: dict[str, tuple[Any, Any]]) -> None:
  """Appends {"step", "time", "changes": {field: [old, new]}} to the run's
  config_changes.jsonl: the config.json before `step`'s resume held the old values."""
  record = {"step": step, "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "changes": {field: list(change) for field, change in differences.items()}}
  paths.append_text(epath.Path(workdir) / CONFIG_CHANGES_FILE, json.dumps(record) + "\n")


def code_version() -> dict[str, Any]:
  """What code runs: the git commit of the trm_jax checkout (and whether files differ from it)
  when the package is one, else the installed distribution's version; with jax's version."""
  import subprocess
  from importlib import metadata
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out: dict[str, Any] = {"jax": jax.__version__}
  try:
    git = lambda *a: subprocess.run(["git", "-C", root, *a], capture_output=True, text=True,
                                    timeout=10, check=True).stdout.strip()
    out["commit"] = git("rev-parse", "HEAD")
    out["dirty"] = bool(git("status", "--porcelain", "--untracked-files=no"))
  except (OSError, subprocess.SubprocessError):
    try:
      out["version"] = metadata.version("trm_jax")
    except metadata.PackageNotFoundError:
      out["version"] = "unknown"
  return out


def record_provenance(workdir, step: int) -> None:
  """Appends {time, step it (re)starts from, code_version()} to the workdir's provenance.jsonl:
  every number a run reports can be traced to the code that produced it."""
  record = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "start_step": step, **code_version()}
  paths.append_text(epath.Path(workdir) / PROVENANCE_FILE, json.dumps(record) + "\n")
