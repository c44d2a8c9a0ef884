"""Resuming a run: what its config may change against the config.json of the run it resumes,
the state and data position restored from the newest good checkpoint, and the record of each
(re)start (config.json, provenance.jsonl, config_changes.jsonl)."""

from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections
from etils import epath

from trm_jax import console as console_lib
from trm_jax import runs as runs_lib
from trm_jax.data import pipeline
from trm_jax.experiment import DATA_SHAPE_FIELDS

# How a run executes, not what it trains: a resume may change these without --allow_config_change
# (where a host keeps its built dataset too: every host checks that all read the same data).
EXECUTION_FIELDS = ("mesh_shape", "execution.matmul", "execution.attention",
                    "train.checkpoint_every_steps", "train.keep_checkpoints",
                    "train.keep_best_checkpoints", "train.profile_steps", "data.data_dir")


class ConfigChangeError(ValueError):
  """A resume whose config differs from the run's config.json, without --allow_config_change."""


def config_changes_on_resume(cfg: ml_collections.ConfigDict, workdir: epath.Path,
                             checkpoint_dir: epath.Path, allow: bool,
                             in_workdir: tuple[str, ...] = ()) -> dict[str, tuple[Any, Any]]:
  """The fields `cfg` would change in the run it resumes ({} when there is no checkpoint to
  resume). Raises ConfigChangeError naming them unless `allow` or they are EXECUTION_FIELDS.

  Compared before the data is opened: the dataset's shapes in config.json are taken as they
  are, since the data fields that decide them are compared themselves. `in_workdir`: fields
  that default to a folder of the workdir (data.data_dir, data.manual_dir); they follow the
  workdir when it is moved or copied, so they are not compared.
  """
  config_path = workdir / runs_lib.CONFIG_FILE
  steps = runs_lib.checkpoint_steps(checkpoint_dir)
  if not steps or not config_path.exists():
    return {}
  old = runs_lib.upgrade_config(json.loads(config_path.read_text()))
  new = json.loads(json.dumps(cfg.to_dict(), default=str))
  for name in DATA_SHAPE_FIELDS:
    if name in old.get("model", {}):
      new["model"][name] = old["model"][name]
  differences = {field: change for field, change in runs_lib.config_differences(old, new).items()
                 if field not in in_workdir}
  refused = {field: change for field, change in differences.items()
             if field not in EXECUTION_FIELDS}
  if refused and not allow:
    listing = "\n".join(f"  {field}: {old_value!r} -> {new_value!r}"
                         for field, (old_value, new_value) in refused.items())
    raise ConfigChangeError(
        f"{workdir} holds a run with checkpoints up to step {steps[-1]} whose config.json "
        f"differs from this config in {len(refused)} field(s) (config.json -> now):\n{listing}\n"
        "Resuming would train one run under two configs. Use another --workdir, give the "
        "run's own values, or pass --allow_config_change to continue with the new ones "
        f"(recorded in {workdir / runs_lib.CONFIG_CHANGES_FILE}).")
  return differences


def restore(checkpoints, state, train_iter, start_position,
            console: console_lib.Console) -> tuple[Any, int]:
  """(state, first step to train): from the newest good checkpoint with the training stream
  moved to where it stood, else `state` with the stream at `start_position` and step 1."""
  restored = checkpoints.restore_latest(state, {"data_iterator": start_position})
  if restored is None:
    pipeline.seek(train_iter, start_position, jax.process_count())
    return state, 1
  last_step, state, loop_state = restored
  pipeline.seek(train_iter, loop_state["data_iterator"], jax.process_count())
  console.line(f"resumed from checkpoint step {last_step} in {checkpoints.directory}")
  return state, last_step + 1


def record_start(workdir: epath.Path, resolved: dict[str, Any], first_step: int,
                 changes: dict[str, tuple[Any, Any]], console: console_lib.Console) -> None:
  """Process 0 writes the run's config.json, appends to provenance.jsonl and, when the config
  changed on this resume, to config_changes.jsonl."""
  if jax.process_index() != 0:
    return
  (workdir / runs_lib.CONFIG_FILE).write_text(json.dumps(resolved, indent=1, default=str))
  runs_lib.record_provenance(workdir, first_step - 1)
  if changes:
    runs_lib.record_config_change(workdir, first_step - 1, changes)
    console.line(f"config changed at step {first_step - 1}: " + ", ".join(
        f"{field} {old!r} -> {new!r}" for field, (old, new) in changes.items()))
