"""Load official PyTorch TRM weights (state_dict layout of SamsungSAILMontreal/TinyRecursiveModels).

    params = trm_jax.convert.from_official_state_dict(state_dict, model_config)

`state_dict` maps official key names to numpy arrays (torch tensors are accepted too). The
prefixes that the official training script adds (`_orig_mod.` from torch.compile, `model.`
from the loss head) are stripped. Every key of the model must be present and every key given
must be known; otherwise a ValueError names the key.

CLI (needs torch, which trm_jax never requires otherwise):

    python -m trm_jax.convert --checkpoint step_1000.pt --preset sudoku_mlp_t \
        --set num_puzzle_identifiers=1001 --out converted/

writes an Orbax PyTree checkpoint of `params` (load with `trm_jax.convert.load_params`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath

from trm_jax import config as config_lib
from trm_jax import model as model_lib
from trm_jax import paths, recursion, schemes
from trm_jax.config import ModelSpec

_STRIP_PREFIXES = ("_orig_mod.", "model.")
_LAYER = re.compile(r"inner\.([LH])_level\.layers\.(\d+)\.(.+)")
# Official module path inside a block -> (our sub-path, transpose?).
_BLOCK_KEYS = {
    "self_attn.qkv_proj.weight": ("mixer/qkv/kernel", True),
    "self_attn.o_proj.weight": ("mixer/out/kernel", True),
    "mlp_t.gate_up_proj.weight": ("mixer/gate_up/kernel", True),
    "mlp_t.down_proj.weight": ("mixer/down/kernel", True),
    "mlp.gate_up_proj.weight": ("mlp/gate_up/kernel", True),
    "mlp.down_proj.weight": ("mlp/down/kernel", True),
}
_TOP_KEYS = {
    "inner.embed_tokens.embedding_weight": ("embed_tokens", False),
    "inner.embed_pos.embedding_weight": ("embed_pos", False),
    "inner.puzzle_emb.weights": ("puzzle_emb", False),
    "inner.lm_head.weight": ("lm_head/kernel", True),
    "inner.q_head.weight": ("q_head/kernel", True),
    "inner.q_head.bias": ("q_head/bias", False),
    "inner.H_init": ("y_init", False),
    "inner.L_init": ("z_init", False),
}  # + the keys of the scheme's own modules (`recursion.Official.keys`)


def _our_path(official_key: str, official: recursion.Official) -> tuple[str, bool]:
  top = {**_TOP_KEYS, **official.keys}
  if official_key in top:
    return top[official_key]
  match = _LAYER.fullmatch(official_key)
  if match and match.group(3) in _BLOCK_KEYS and match.group(1) in official.levels:
    sub, transpose = _BLOCK_KEYS[match.group(3)]
    return f"{official.levels[match.group(1)]}/layers/{match.group(2)}/{sub}", transpose
  raise KeyError(official_key)


def _official_key(path: str, official: recursion.Official) -> str:
  """Inverse of `_our_path` (each of our paths has exactly one official name)."""
  top = {ours: key for key, (ours, _) in {**_TOP_KEYS, **official.keys}.items()}
  if path in top:
    return top[path]
  net, _, index, sub = path.split("/", 3)
  block = {ours: key for key, (ours, _) in _BLOCK_KEYS.items()}
  level = {ours: level for level, ours in official.levels.items()}[net]
  return f"inner.{level}_level.layers.{index}.{block[sub]}"


def official_names(model_config) -> dict[str, tuple[str, bool]]:
  """Every parameter path of the model -> (its official state-dict key, stored transposed?)."""
  spec = ModelSpec.from_config(model_config)
  official = model_lib.scheme_of(spec).official
  if official is None:
    raise ValueError(f"model field scheme={spec.scheme!r}: the official code has no such model")
  names = {}
  for path in _flatten(model_lib.abstract_params(spec)):
    key = _official_key(path, official)
    names[path] = (key, _our_path(key, official)[1])
  return names


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor; bf16 has no numpy dtype, fp32 holds it exactly
    value = value.detach().cpu()
    value = value.float() if value.is_floating_point() else value
    return value.numpy()
  return np.asarray(value)


def _flatten(tree, prefix="") -> dict[str, Any]:
  if isinstance(tree, Mapping):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}/"))
    return out
  return {prefix[:-1]: tree}


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    node = tree
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  return tree


def strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  out = {}
  for key, value in state_dict.items():
    name = key
    changed = True
    while changed:
      changed = False
      for prefix in _STRIP_PREFIXES:
        if name.startswith(prefix):
          name, changed = name[len(prefix):], True
    out[name] = value
  return out


def from_official_state_dict(state_dict: Mapping[str, Any], model_config) -> model_lib.Params:
  """Official TRM state_dict -> trm_jax params for `model_config` (shapes checked)."""
  spec = ModelSpec.from_config(model_config)
  official = model_lib.scheme_of(spec).official
  if official is None:
    raise ValueError(f"model field scheme={spec.scheme!r}: the official code has no such model")
  expected = _flatten(model_lib.abstract_params(spec))
  converted: dict[str, np.ndarray] = {}
  for key, value in strip_prefixes(state_dict).items():
    try:
      path, transpose = _our_path(key, official)
    except KeyError:
      raise ValueError(f"official state_dict key '{key}' is not part of a TRM model "
                       "(unknown key)") from None
    if path not in expected:
      raise ValueError(f"official state_dict key '{key}' has no counterpart in this model config "
                       f"(maps to '{path}'; check mlp_t / pos_encodings / num_layers / "
                       "puzzle_emb_ndim)")
    array = _to_numpy(value)
    array = array.T if transpose else array
    want = expected[path]
    if array.shape != want.shape:
      raise ValueError(f"official state_dict key '{key}' has shape {tuple(_to_numpy(value).shape)}; "
                       f"the model config needs {tuple(want.shape[::-1] if transpose else want.shape)}")
    converted[path] = jnp.asarray(array, dtype=want.dtype)
  missing = sorted(set(expected) - set(converted))
  if missing:
    raise ValueError(f"official state_dict is missing key(s) {[_official_key(m, official) for m in missing]}")
  return _unflatten(converted)


# Official arch field -> trm_jax model field, where the names differ.
OFFICIAL_RENAMES = {"L_layers": "num_layers", "forward_dtype": "compute_dtype"}
# Official arch fields that do not shape the model (or, H_layers, are unused by TRM; the DIS
# code's classifier-free-guidance fields are declared but never read by it).
OFFICIAL_IGNORED = ("batch_size", "H_layers", "name", "loss", "cf_uncond_prob", "cfg_guidance_w")
# trm_jax model fields the official arch lacks, with the value the official model has (None:
# performance only or set elsewhere, e.g. the loss type in the official loss head).
TRM_JAX_ONLY = {"param_dtype": "float32", "remat": None, "loss_type": None}


def scheme_for_official(name: str) -> str:
  """The registered scheme whose `official` arch name is `name` ('module.path@Class'): the
  one with the same class and last module component, else (a name without its module, or
  another module) the primary scheme of that class (TRM for ACTV1)."""
  module, model_class = name.rsplit("@", 1) if "@" in name else ("", name)
  found = {}
  for scheme_name in schemes.names():
    # Only a class that declares it: a subclass inherits its parent's origin for converting
    # weights, but the official name means the parent.
    official = vars(schemes.get(scheme_name)).get("official")
    if official is not None:
      theirs, _, their_class = official.arch_name.rpartition("@")
      if their_class == model_class:
        found[scheme_name] = (theirs.rsplit(".", 1)[-1], official.primary)
  exact = [n for n, (last, _) in found.items() if module and last == module.rsplit(".", 1)[-1]]
  primary = [n for n, (_, is_primary) in found.items() if is_primary]
  if exact or primary:
    return (exact or primary)[0]
  known = sorted(schemes.get(n).official.arch_name for n in schemes.names()
                 if schemes.get(n).official)
  raise ValueError(f"official config field 'name' = {name!r}: trm_jax reads {known}")


def model_config_from_official(arch: Mapping[str, Any]) -> "config_lib.ml_collections.ConfigDict":
  """Official arch config dict (e.g. from all_config.yaml's `arch`) -> trm_jax model config.

  The model class in `name` picks the scheme: TRM (ACTV1, also when no name is given) or DIS
  (ACTV5, the official DIS code)."""
  cfg = config_lib.model_config(seq_len=arch["seq_len"], vocab_size=arch["vocab_size"])
  name = str(arch.get("name", "TinyRecursiveReasoningModel_ACTV1"))
  cfg.scheme = scheme_for_official(name)
  official = schemes.get(cfg.scheme).official
  cfg.update(dict(official.implied))
  as_options = official.options
  cfg.scheme_options = {ours: arch[key] for key, ours in as_options.items() if key in arch}
  for key, value in arch.items():
    if key in OFFICIAL_IGNORED or key in as_options:
      continue
    key = OFFICIAL_RENAMES.get(key, key)
    if key not in cfg or key in TRM_JAX_ONLY or key in ("scheme", "scheme_options"):
      raise ValueError(f"official config field '{key}' has no trm_jax equivalent")
    cfg[key] = value
  ModelSpec.from_config(cfg)  # Validate now, naming the bad field.
  return cfg


def official_arch(model_config) -> dict[str, Any]:
  """trm_jax model config -> the official arch dict, every field but batch_size (the inverse
  of `model_config_from_official`). Raises ValueError, naming the field, for a model the
  official code cannot build."""
  spec = ModelSpec.from_config(model_config)
  scheme = model_lib.scheme_of(spec)
  official = scheme.official
  if official is None:
    raise ValueError(f"model field scheme={spec.scheme!r}: the official code has "
                     f"{sorted(n for n in schemes.names() if schemes.get(n).official)} only")
  defaults = type(scheme.opts)()
  in_arch = set(official.options.values())  # options the arch spells out
  for name, value in spec.scheme_options:
    if name not in in_arch and value != getattr(defaults, name):
      raise ValueError(f"model field scheme_options.{name}={value!r}: the official code only has "
                       f"{getattr(defaults, name)!r}")
  for field, value in TRM_JAX_ONLY.items():
    if value is not None and getattr(spec, field) != value:
      raise ValueError(f"model field {field}={getattr(spec, field)!r}: the official model only "
                       f"has {value!r}")
  ours_to_official = {ours: official for official, ours in OFFICIAL_RENAMES.items()}
  arch = {ours_to_official.get(f.name, f.name): getattr(spec, f.name)
          for f in dataclasses.fields(spec)
          if f.name not in TRM_JAX_ONLY and f.name not in ("scheme", "scheme_options")}
  arch["name"] = official.arch_name
  arch["expansion"] = float(arch["expansion"])
  arch["H_layers"] = 0  # Required by the official config class, unused by TRM.
  for key, ours in official.options.items():
    arch[key] = getattr(scheme.opts, ours)
  for key in official.implied:
    arch.pop(key)
  return arch


def save_params(params: model_lib.Params, directory: paths.PathLike) -> None:
  from orbax.checkpoint import v1 as ocp
  ocp.save(paths.absolute(directory), params)


def load_params(directory: paths.PathLike, model_config) -> model_lib.Params:
  from orbax.checkpoint import v1 as ocp
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          model_lib.abstract_params(model_config))
  return ocp.load(paths.absolute(directory), abstract)


def _split_override(text: str) -> tuple[str, str]:
  if "=" not in text:
    raise argparse.ArgumentTypeError(f"--set expects key=value, got '{text}'")
  key, raw = text.split("=", 1)
  return key.strip(), raw.strip()


def cli(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--checkpoint", required=True, help="official .pt state_dict file")
  parser.add_argument("--preset", choices=sorted(config_lib.PRESETS),
                      help="trm_jax model preset the checkpoint was trained with")
  parser.add_argument("--official_config", help="official all_config.yaml / JSON with an 'arch' "
                      "section (alternative to --preset)")
  parser.add_argument("--set", action="append", default=[], type=_split_override,
                      help="model config override key=value (repeatable)")
  parser.add_argument("--out", required=True, help="output directory (Orbax checkpoint)")
  args = parser.parse_args(argv)
  if bool(args.preset) == bool(args.official_config):
    parser.error("give exactly one of --preset and --official_config")
  if args.preset:
    cfg = config_lib.PRESETS[args.preset]()
  else:
    text = epath.Path(args.official_config).read_text()
    if args.official_config.endswith((".yaml", ".yml")):
      import yaml  # Only for this optional path.
      loaded = yaml.safe_load(text)
    else:
      loaded = json.loads(text)
    cfg = model_config_from_official(loaded.get("arch", loaded))
  for key, raw in args.set:
    if key not in cfg:
      parser.error(f"--set {key}: unknown model config field")
    try:
      cfg[key] = config_lib.parse_field_value(raw, cfg[key])
    except ValueError as error:
      parser.error(f"--set {key}={raw}: {error}")
  try:
    import torch
  except ImportError:
    parser.error("reading .pt files needs torch: pip install 'trm_jax[torch]'")
  state_dict = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
  params = from_official_state_dict(state_dict, cfg)
  save_params(params, args.out)
  print(f"converted {len(state_dict)} tensors "
        f"({model_lib.count_params(params, include_puzzle_table=True):,} parameters) -> {args.out}")
  print(json.dumps(cfg.to_dict(), indent=1))


if __name__ == "__main__":
  cli()
