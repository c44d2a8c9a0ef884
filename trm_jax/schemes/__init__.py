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
_discovered = False


def _where(obj) -> tuple[str, str]:
  """What identifies a definition across re-imports of its module."""
  return obj.__module__, obj.__qualname__


def _claim(name: str, where: tuple[str, str]) -> None:
  """Refuses `name` when a scheme defined elsewhere holds it. A scheme from outside the package
  finds the built-ins first, so a clash shows at the registration that causes it (a built-in
  registering itself does not: its module is still being imported)."""
  if not where[0].startswith(__name__ + "."):
    _discover()
  previous = _CLASSES.get(name)
  if previous is not None and _where(getattr(previous, "defined_by", previous)) != where:
    holder = ".".join(_where(getattr(previous, "defined_by", previous)))
    raise ValueError(f"recursion scheme '{name}' is already registered ({holder})")


def register(scheme_cls: type[recursion.Scheme]) -> type[recursion.Scheme]:
  """Class decorator: makes `scheme_cls` the scheme `scheme_cls.name`."""
  if not (isinstance(scheme_cls, type) and issubclass(scheme_cls, recursion.Scheme)):
    raise TypeError(f"register takes a recursion.Scheme subclass, got {scheme_cls!r}")
  if not scheme_cls.name:
    raise ValueError(f"{scheme_cls.__name__} has no name")
  _claim(scheme_cls.name, _where(scheme_cls))
  _CLASSES[scheme_cls.name] = scheme_cls
  _bind.cache_clear()
  return scheme_cls


def register_scheme(name: str, *, forward_passes: Callable[[ModelSpec], int]):
  """Decorator: `recur(spec, net, net_params, latents, x) -> Latents` as a scheme that is TRM
  (its modules, carry, loss and halting) with this recursion inside its step. A `recur` that
  also takes `on_y` traces the readout after each y update (`recursion.trm_recursion`)."""
  base = get("trm")

  def decorate(recur: recursion.RecurFn) -> recursion.RecurFn:
    _claim(name, _where(recur))
    scheme_cls = base.with_recursion(name, recur, forward_passes)
    scheme_cls.defined_by = recur
    _CLASSES[name] = scheme_cls
    _bind.cache_clear()
    return recur
  return decorate


def _discover() -> None:
  """Imports the package's scheme modules once (each registers its class)."""
  global _discovered
  if _discovered:
    return
  _discovered = True
  try:
    for module in pkgutil.iter_modules(__path__):
      importlib.import_module(f"{__name__}.{module.name}")
  except BaseException:
    _discovered = False  # a later lookup tries again (and shows the error again)
    raise


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


def bind(spec: ModelSpec) -> recursion.Scheme:
  """The scheme of `spec`, built once: its options parsed and validated, errors naming the
  model-config field."""
  # Keyed by the options' types too: specs with K=True and K=1 are equal, yet only one is valid.
  return _bind(spec, tuple(type(value) for _, value in spec.scheme_options))


@functools.lru_cache(maxsize=None)
def _bind(spec: ModelSpec, option_types) -> recursion.Scheme:
  del option_types
  return get(spec.scheme)(spec)
