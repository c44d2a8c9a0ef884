"""The scheme registry: scheme name -> class, and each model spec's bound scheme.

Built-in schemes are the modules of this package, discovered (imported) on the first lookup of
a name that is not registered yet; a scheme of your own registers when its module is imported
(from your experiment config, or `--imports` of analyze / solve / lm_eval). The contract is
trm_jax/recursion.py.

    @schemes.register
    class Mine(recursion.Scheme): name = "mine"; ...

    @schemes.register_scheme("my_recursion", forward_passes=lambda spec: 2 * spec.L_cycles)
    def my_recursion(spec, net, net_params, latents, x): ...   # -> Latents, inside TRM's step
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from typing import Callable

from trm_jax import recursion
from trm_jax.config import ModelSpec

_CLASSES: dict[str, type[recursion.Scheme]] = {}


def register(scheme_cls: type[recursion.Scheme]) -> type[recursion.Scheme]:
  """Class decorator: makes `scheme_cls` the scheme `scheme_cls.name`."""
  if not (isinstance(scheme_cls, type) and issubclass(scheme_cls, recursion.Scheme)):
    raise TypeError(f"register takes a recursion.Scheme subclass, got {scheme_cls!r}")
  if not scheme_cls.name:
    raise ValueError(f"{scheme_cls.__name__} has no name")
  previous = _CLASSES.get(scheme_cls.name)
  if previous is not None and previous.__qualname__ != scheme_cls.__qualname__:
    raise ValueError(f"recursion scheme '{scheme_cls.name}' is already registered "
                     f"({previous.__module__}.{previous.__qualname__})")
  _CLASSES[scheme_cls.name] = scheme_cls
  bind.cache_clear()
  return scheme_cls


def register_scheme(name: str, *, forward_passes: Callable[[ModelSpec], int]):
  """Decorator: `recur(spec, net, net_params, latents, x) -> Latents` as a scheme that is TRM
  (its modules, carry, loss and halting) with this recursion inside its step. A `recur` that
  also takes `on_y` traces the readout after each y update (`recursion.trm_recursion`)."""
  base = get("trm")

  def decorate(recur: recursion.RecurFn) -> recursion.RecurFn:
    previous = _CLASSES.get(name)
    if previous is not None and getattr(previous, "recur", None) is not recur:
      raise ValueError(f"recursion scheme '{name}' is already registered")
    _CLASSES[name] = base.with_recursion(name, recur, forward_passes)
    bind.cache_clear()
    return recur
  return decorate


def _discover() -> None:
  for module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{module.name}")


def names() -> list[str]:
  """Every registered scheme (the built-in ones included)."""
  _discover()
  return sorted(_CLASSES)


def get(name: str) -> type[recursion.Scheme]:
  if name not in _CLASSES:
    _discover()
  try:
    return _CLASSES[name]
  except KeyError:
    raise ValueError(f"model config field 'scheme' = {name!r}: must be one of the registered "
                     f"schemes {names()} (a scheme of your own registers when its module is "
                     "imported)") from None


@functools.lru_cache(maxsize=None)
def bind(spec: ModelSpec) -> recursion.Scheme:
  """The scheme of `spec`, built once: its options parsed and validated, errors naming the
  model-config field."""
  return get(spec.scheme)(spec)
