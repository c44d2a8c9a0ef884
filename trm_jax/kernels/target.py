"""The devices a program is being traced for: what the kernel and attention choices read.

A jitted step runs on the devices of its mesh, which need not be the process's default backend:
`python -m trm_jax.aot` traces on a CPU host for a TPU slice's devices (jax's topology
descriptions), so `jax.default_backend()` would answer "cpu" and let the CPU kernels into a TPU
program. The step builders (trm_jax/steps.py) therefore trace inside `lowering_for(mesh)`, and
the dispatch in matmul.py / attention.py asks `current()`. Outside a builder (a plain `jax.jit`
of the model in a script or a test) the target is the process's own backend and devices.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses

import jax


@dataclasses.dataclass(frozen=True)
class Target:
  platform: str  # "cpu", "gpu" or "tpu"
  num_devices: int
  nvidia: bool = False  # a CUDA GPU (cuDNN's fused attention is there)
  # The mesh and its batch axes, where a step builder set them: a kernel XLA cannot partition
  # (a Pallas TPU kernel) runs under shard_map over them.
  mesh: jax.sharding.Mesh | None = None
  batch_axes: tuple[str, ...] = ()


_CURRENT: contextvars.ContextVar[Target | None] = contextvars.ContextVar(
    "trm_jax_kernel_target", default=None)


def _cuda(device) -> bool:
  client = getattr(device, "client", None)
  return client is not None and "cuda" in client.platform_version.lower()


def _of_devices(devices) -> Target:
  devices = list(devices)
  first = devices[0]
  return Target(first.platform, len(devices), first.platform == "gpu" and _cuda(first))


def of_mesh(mesh: jax.sharding.Mesh, batch_axes: tuple[str, ...] = ()) -> Target:
  return dataclasses.replace(_of_devices(mesh.devices.flat), mesh=mesh, batch_axes=batch_axes)


def current() -> Target:
  """The target of the trace in progress: the innermost `lowering_for`, else this process's
  default backend and all its devices."""
  target = _CURRENT.get()
  if target is not None:
    return target
  platform = jax.default_backend()
  return Target(platform, jax.device_count(), platform == "gpu" and _cuda(jax.devices()[0]))


@contextlib.contextmanager
def lowering_for(target: Target | jax.sharding.Mesh, batch_axes: tuple[str, ...] = ()):
  """Trace (lower) the enclosed jitted calls for `target` (a Target, or a mesh whose
  `batch_axes` split the batch; that mesh is then also JAX's context mesh for the block, in
  place of whatever mesh the process set, e.g. a CPU run's before an `aot` compile)."""
  mesh = target if isinstance(target, jax.sharding.Mesh) else None
  if mesh is not None:
    target = of_mesh(mesh, batch_axes)
  token = _CURRENT.set(target)
  try:
    with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
      yield target
  finally:
    _CURRENT.reset(token)
