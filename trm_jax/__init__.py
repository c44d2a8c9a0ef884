"""trm_jax: Tiny Recursive Models and Deep Improvement Supervision in JAX/Flax."""

from trm_jax import config, recursion
from trm_jax.config import ModelSpec
from trm_jax.model import (abstract_params, count_params, forward_passes_per_step, init_params,
                           initial_carry, supervision_step)
from trm_jax import convert  # noqa: E402  (needs model)

__all__ = [
    "ModelSpec", "abstract_params", "config", "convert", "count_params",
    "forward_passes_per_step", "init_params", "initial_carry", "recursion", "supervision_step",
]
