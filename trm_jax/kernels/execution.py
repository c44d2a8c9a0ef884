"""How the program being traced runs its matmuls and attention: the execution settings.

    with execution.using(execution.Settings(matmul="xla")):
      lowered = steps.train_step(...)           # every Linear / SwiGLU / Attention: XLA's dot

`matmul` (kernels/matmul.py's IMPLS) and `attention` (kernels/attention.py's IMPLS) choose
kernels, not the model: every choice computes the same function up to fp32 summation order, so
they are not part of the model config (a checkpoint does not depend on them and a resume may
change them). Experiments set them in `config.execution`; `trm_jax.main` and `trm_jax.aot`
trace their steps inside `using(...)`, and the layers of nn.py read `current()` at trace time.

A trace reads the settings, so a jitted function must not be reused under other settings: the
step builders (trm_jax/steps.py) jit afresh each time they are called, and a jit that lives
across calls takes the settings as a static argument (`model.supervision_step`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses


@dataclasses.dataclass(frozen=True)
class Settings:
  matmul: str = "auto"
  attention: str = "auto"


# Until issue 29 both were model config fields: runs saved then hold them under `model`, and
# `--config.model.matmul` is what their users type.
FORMER_MODEL_FIELDS = ("matmul", "attention")


_CURRENT: contextvars.ContextVar[Settings] = contextvars.ContextVar(
    "trm_jax_execution_settings", default=Settings())


def current() -> Settings:
  """The settings of the trace in progress: the innermost `using`, else the defaults."""
  return _CURRENT.get()


@contextlib.contextmanager
def using(settings: Settings):
  """Trace the enclosed code with `settings`."""
  token = _CURRENT.set(settings)
  try:
    yield settings
  finally:
    _CURRENT.reset(token)
