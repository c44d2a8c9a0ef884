"""trm_jax: Tiny Recursive Models and Deep Improvement Supervision in JAX/Flax.

Importing the package imports nothing heavy (no JAX): the names below load on first use, so
that the data generators and `trm_jax.host_memory` load without it.
"""

import importlib

_EXPORTS = {
    "ModelSpec": ("trm_jax.config", "ModelSpec"),
    "abstract_params": ("trm_jax.model", "abstract_params"),
    "count_params": ("trm_jax.model", "count_params"),
    "forward_passes_per_step": ("trm_jax.model", "forward_passes_per_step"),
    "init_params": ("trm_jax.model", "init_params"),
    "initial_carry": ("trm_jax.model", "initial_carry"),
    "load": ("trm_jax.runs", "load"),
    "supervision_step": ("trm_jax.model", "supervision_step"),
}
_SUBMODULES = ("config", "convert", "recursion", "schemes")

__all__ = sorted(_EXPORTS) + list(_SUBMODULES)


def __getattr__(name):
  if name in _EXPORTS:
    module, attr = _EXPORTS[name]
    value = getattr(importlib.import_module(module), attr)
  elif name in _SUBMODULES:
    value = importlib.import_module(f"trm_jax.{name}")
  else:
    raise AttributeError(f"module 'trm_jax' has no attribute {name!r}")
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(__all__))
