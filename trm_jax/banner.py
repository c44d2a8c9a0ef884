"""The header lines a run prints first: where it runs, on what, which model, which data."""

from __future__ import annotations

import jax
from trm_jax import model as model_lib
from trm_jax import paths
from trm_jax.config import ModelSpec

def run_header(workdir_path, mesh, spec: ModelSpec, trainable, puzzle_table, cfg, data,
               data_seconds: float) -> list[tuple[str, str]]:
  """The header lines every run starts with: where, on what, which model, which data."""
  device = jax.devices()[0]
  kind = (device.device_kind if device.device_kind.lower() == device.platform
          else f"{device.device_kind} ({device.platform})")
  processes = f" over {jax.process_count()} processes" if jax.process_count() > 1 else ""
  table = f" (+{puzzle_table.size:,} in the puzzle table)" if puzzle_table is not None else ""
  return [
      ("workdir", str(paths.absolute(workdir_path))),
      ("devices", f"{jax.device_count()} x {kind}{processes}"),
      ("mesh", ", ".join(f"{axis}={size}" for axis, size in mesh.shape.items())),
      ("model", f"{spec.scheme}, {model_lib.count_params(trainable):,} parameters{table}, up "
                f"to {spec.halt_max_steps} supervision steps of "
                f"{model_lib.forward_passes_per_step(spec)} forward passes"),
      ("data", f"{cfg.data.builder}/{cfg.data.builder_config.name}: "
               f"{data.train_index.num_records:,} train records "
               f"({data.train_index.epoch_length:,} per epoch), "
               + (f"{len(data.validation):,} validation, " if data.validation is not None else "")
               + f"{len(data.test):,} test; "
               f"ready in {data_seconds:.1f}s"),
  ]
