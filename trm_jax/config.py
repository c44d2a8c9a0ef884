"""Model configuration: ml-collections ConfigDicts for users, a frozen spec for jit.

Users edit `ml_collections.ConfigDict`s (the presets below, `experiments/`, `--config.x=...`).
Traced code needs hashable static arguments, so every entry point turns the ConfigDict into a
validated, frozen `ModelSpec` first; bad values fail there, naming the field, before anything
is compiled.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from typing import Any

import jax.numpy as jnp
import ml_collections

POS_ENCODINGS = ("rope", "learned", "none")
LOSS_TYPES = ("stablemax", "softmax")
REMAT_POLICIES = ("none", "full", "dots_saveable", "dots_with_no_batch_dims_saveable")
DTYPES = ("float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """Everything that fixes the network's shapes and the recursion's structure."""

  # Task shape.
  seq_len: int
  vocab_size: int
  num_puzzle_identifiers: int = 1
  puzzle_emb_ndim: int = 512
  puzzle_emb_len: int = 16  # 0: ceil(puzzle_emb_ndim / hidden_size), as in the official code.
  # Network.
  hidden_size: int = 512
  num_heads: int = 8
  expansion: float = 4.0
  num_layers: int = 2
  pos_encodings: str = "rope"
  mlp_t: bool = False
  rms_norm_eps: float = 1e-5
  rope_theta: float = 10000.0
  # Recursion.
  scheme: str = "trm"
  # The scheme's own settings (parsed into its typed Options by `schemes.bind`): (name, value)
  # pairs, sorted; a dict in the ConfigDict (`--config.model.scheme_options.input=puzzle`).
  # Absent = the scheme's default.
  scheme_options: tuple = ()
  H_cycles: int = 3
  L_cycles: int = 6
  # Adaptive computation time (deep supervision).
  halt_max_steps: int = 16
  halt_exploration_prob: float = 0.1
  no_ACT_continue: bool = True
  # Numerics.
  param_dtype: str = "float32"
  compute_dtype: str = "bfloat16"
  remat: str = "none"
  loss_type: str = "stablemax"

  @classmethod
  def from_config(cls, config: "ml_collections.ConfigDict | ModelSpec | dict[str, Any]") -> "ModelSpec":
    if isinstance(config, ModelSpec):
      return config
    values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"model config: unknown field(s) {unknown}; known fields: {sorted(known)}")
    missing = [f.name for f in dataclasses.fields(cls)
               if f.default is dataclasses.MISSING and f.name not in values]
    if missing:
      raise ValueError(f"model config: missing required field(s) {missing}")
    options = values.get("scheme_options", ())
    if isinstance(options, (dict, ml_collections.ConfigDict)):
      options = options.to_dict() if isinstance(options, ml_collections.ConfigDict) else options
      values["scheme_options"] = tuple(sorted(options.items()))
    spec = cls(**values)
    spec.validate()
    return spec

  def validate(self) -> None:
    def fail(field: str, why: str):
      raise ValueError(f"model config field '{field}' = {getattr(self, field)!r}: {why}")

    for name in ("seq_len", "vocab_size", "num_puzzle_identifiers", "hidden_size", "num_heads",
                 "num_layers", "H_cycles", "L_cycles", "halt_max_steps"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        fail(name, "must be a positive integer")
    for name in ("puzzle_emb_ndim", "puzzle_emb_len"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        fail(name, "must be a non-negative integer")
    if not self.expansion > 0:
      fail("expansion", "must be positive")
    if self.pos_encodings not in POS_ENCODINGS:
      fail("pos_encodings", f"must be one of {POS_ENCODINGS}")
    if not self.mlp_t and self.hidden_size % self.num_heads:
      fail("num_heads", f"must divide hidden_size={self.hidden_size}")
    if self.pos_encodings == "rope" and not self.mlp_t and (self.hidden_size // self.num_heads) % 2:
      fail("num_heads", "RoPE needs an even head dimension (hidden_size / num_heads)")
    if self.puzzle_emb_ndim > self.prefix_len * self.hidden_size:
      fail("puzzle_emb_ndim", f"does not fit in puzzle_emb_len={self.puzzle_emb_len} tokens of "
           f"hidden_size={self.hidden_size}")
    if not 0.0 <= self.halt_exploration_prob <= 1.0:
      fail("halt_exploration_prob", "must be in [0, 1]")
    if not self.rms_norm_eps > 0:
      fail("rms_norm_eps", "must be positive")
    for name in ("param_dtype", "compute_dtype"):
      if getattr(self, name) not in DTYPES:
        fail(name, f"must be one of {DTYPES}")
    if self.remat not in REMAT_POLICIES:
      fail("remat", f"must be one of {REMAT_POLICIES}")
    if self.loss_type not in LOSS_TYPES:
      fail("loss_type", f"must be one of {LOSS_TYPES}")
    if not isinstance(self.scheme, str) or not self.scheme:
      fail("scheme", "must be a scheme's name")
    # The scheme's name and options are the scheme's to check (`schemes.bind`).

  @property
  def prefix_len(self) -> int:
    """Tokens prepended for the puzzle embedding (official ceil-div rule when 0)."""
    if self.puzzle_emb_len:
      return self.puzzle_emb_len
    return math.ceil(self.puzzle_emb_ndim / self.hidden_size)

  @property
  def total_len(self) -> int:
    return self.seq_len + self.prefix_len

  @property
  def jnp_compute_dtype(self):
    return jnp.dtype(self.compute_dtype)

  @property
  def jnp_param_dtype(self):
    return jnp.dtype(self.param_dtype)


def parse_field_value(raw: str, current: Any) -> Any:
  """A command-line string converted to the type of the config value `current` it replaces
  (booleans from 1/0, true/false, yes/no, on/off); for a new field or None, a Python literal
  if it is one (numbers, booleans, tuples), else the string."""
  if isinstance(current, bool):
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
      return True
    if low in ("0", "false", "no", "off"):
      return False
    raise ValueError(f"expected a boolean, got {raw!r}")
  if isinstance(current, int):
    return int(raw)
  if isinstance(current, float):
    return float(raw)
  if isinstance(current, str):
    return raw
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw


def model_config(**overrides) -> ml_collections.ConfigDict:
  values = {f.name: f.default for f in dataclasses.fields(ModelSpec)
            if f.default is not dataclasses.MISSING}
  values["scheme_options"] = {}
  values.update(overrides)
  return ml_collections.ConfigDict(values)


def sudoku_mlp_t(num_puzzle_identifiers: int = 1) -> ml_collections.ConfigDict:
  """Official Sudoku-Extreme mlp_t recipe (about 5.0M parameters without the puzzle table)."""
  return model_config(seq_len=81, vocab_size=11, num_puzzle_identifiers=num_puzzle_identifiers,
                mlp_t=True, pos_encodings="none", H_cycles=3, L_cycles=6)


def sudoku_attention(num_puzzle_identifiers: int = 1) -> ml_collections.ConfigDict:
  """Official Sudoku-Extreme attention recipe (about 6.8M parameters)."""
  return model_config(seq_len=81, vocab_size=11, num_puzzle_identifiers=num_puzzle_identifiers,
                H_cycles=3, L_cycles=6)


def maze_attention(num_puzzle_identifiers: int = 1) -> ml_collections.ConfigDict:
  """Official Maze-Hard 30x30 recipe (n=4 as in the official command)."""
  return model_config(seq_len=900, vocab_size=6, num_puzzle_identifiers=num_puzzle_identifiers,
                H_cycles=3, L_cycles=4)


def arc_attention(num_puzzle_identifiers: int = 1) -> ml_collections.ConfigDict:
  """Official ARC-AGI recipe (n=4 as in the official command)."""
  return model_config(seq_len=900, vocab_size=12, num_puzzle_identifiers=num_puzzle_identifiers,
                H_cycles=3, L_cycles=4)


def tiny(seq_len: int = 16, vocab_size: int = 11, num_puzzle_identifiers: int = 8,
         mlp_t: bool = False) -> ml_collections.ConfigDict:
  """A CPU-sized network for tests and smoke runs."""
  return model_config(seq_len=seq_len, vocab_size=vocab_size,
                num_puzzle_identifiers=num_puzzle_identifiers, hidden_size=64, num_heads=4,
                puzzle_emb_ndim=64, puzzle_emb_len=4, H_cycles=2, L_cycles=2, halt_max_steps=4,
                mlp_t=mlp_t, pos_encodings="none" if mlp_t else "rope",
                compute_dtype="float32")


PRESETS = {
    "sudoku_mlp_t": sudoku_mlp_t,
    "sudoku_attention": sudoku_attention,
    "maze_attention": maze_attention,
    "arc_attention": arc_attention,
    "tiny": tiny,
}
