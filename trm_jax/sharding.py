"""Device mesh and shardings of the train state, declared as short (regex, spec) rules.

The mesh has two axes: `data` (batch only) and `fsdp` (batch and parameters). Batches are split
over both; a parameter matching a rule is split along the given dimension over `fsdp` (or over
every device, for the puzzle table); anything else is replicated. A dimension that does not
divide evenly is replicated instead, so any rule set works on any mesh.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")

# Path regex -> partition spec (first match wins). Paths look like
# "trainable/net/layers/0/mlp/gate_up/kernel" or "opt_state/mu/lm_head/kernel".
DEFAULT_RULES: tuple[tuple[str, P], ...] = (
    # The puzzle table: rows over every device (the official code keeps a full copy per GPU).
    (r"(^|/)puzzle_emb$", P(BATCH_AXES, None)),
    # Dense kernels [in, out]: FSDP over the input dimension.
    (r"/kernel$", P("fsdp", None)),
    (r"(^|/)embed_(tokens|pos)$", P(None, "fsdp")),
)


# The puzzle table is split by rows over every device, which needs the row count to divide by
# the device count; a count that does not (ARC-1 has 876,406 puzzle ids = 2 x 438,203) would
# leave the whole table on every chip (1.8 GB at 512 dims; `_fits` replicates what does not
# divide). Tables past TABLE_ROW_MULTIPLE rows are therefore allocated rounded up to a multiple
# of it (the extra rows are never indexed: < 0.12% more rows): any power-of-two slice up to 1024
# chips splits them, and the shape does not depend on the mesh, so a checkpoint still restores
# onto another mesh. Smaller tables stay exact (a copy per chip costs at most 2 MB).
TABLE_ROW_MULTIPLE = 1024


def table_rows(num_puzzle_identifiers: int) -> int:
  """The puzzle-table rows to allocate for `num_puzzle_identifiers` ids."""
  if num_puzzle_identifiers <= TABLE_ROW_MULTIPLE:
    return num_puzzle_identifiers
  return -(-num_puzzle_identifiers // TABLE_ROW_MULTIPLE) * TABLE_ROW_MULTIPLE


def make_mesh(shape: Sequence[int], devices=None) -> jax.sharding.Mesh:
  """A (data, fsdp) mesh; one -1 entry takes the remaining devices."""
  devices = list(devices if devices is not None else jax.devices())
  shape = list(shape)
  if len(shape) != 2:
    raise ValueError(f"mesh shape {shape}: expected [data, fsdp]")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {shape}: at most one -1")
  if -1 in shape:
    known = math.prod(s for s in shape if s != -1)
    if len(devices) % known:
      raise ValueError(f"mesh shape {shape} does not divide {len(devices)} devices")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(f"mesh shape {shape} needs {math.prod(shape)} devices, have {len(devices)}")
  return jax.make_mesh(tuple(shape), ("data", "fsdp"), devices=devices,
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def _path(key_path) -> str:
  parts = []
  for key in key_path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
  return "/".join(parts)


def _fits(mesh, spec: P, shape) -> bool:
  for dim, axes in enumerate(spec):
    if axes is None:
      continue
    names = axes if isinstance(axes, tuple) else (axes,)
    if dim >= len(shape) or shape[dim] % math.prod(mesh.shape[n] for n in names):
      return False
  return True


def tree_shardings(mesh, tree, rules=DEFAULT_RULES, batch_prefixes: Sequence[str] = ("act/",)):
  """NamedShardings for every leaf of `tree` (arrays or ShapeDtypeStructs).

  Leaves under `batch_prefixes` (the ACT carry: per-row latents and data) split their first
  dimension over the batch axes; the rest follow `rules`.
  """
  def choose(key_path, leaf):
    path = _path(key_path)
    shape = np.shape(leaf)
    if any(path.startswith(p) for p in batch_prefixes) and shape:
      spec = P(BATCH_AXES, *([None] * (len(shape) - 1)))
      return NamedSharding(mesh, spec if _fits(mesh, spec, shape) else P())
    for pattern, spec in rules:
      if re.search(pattern, path):
        return NamedSharding(mesh, spec if _fits(mesh, spec, shape) else P())
    return NamedSharding(mesh, P())
  return jax.tree_util.tree_map_with_path(choose, tree)


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def global_batch(mesh, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """This process's rows -> one global array per field, split over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}
