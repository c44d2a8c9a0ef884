r"""Compile a recipe's training and evaluation steps for a TPU slice, on a machine without one.

    pip install "jax[tpu]==$(python -c 'import jax; print(jax.__version__)')"   # libtpu
    python -m trm_jax.aot --config experiments/arc.py:arc1 --topology v5e:16x16
    python -m trm_jax.aot --config experiments/arc.py:dis_medium --topology v5p:2x2x2 \
        --config.train.global_batch_size=1024 --json /tmp/dis_medium_v5p16.json

The programs are the ones `python -m trm_jax.main` runs (trm_jax/steps.py), with the mesh of
`config.mesh_shape` over the slice's devices (jax's topology description: every chip of every
host, so a 64-host v5e-256 compiles here too) and the shardings of trm_jax/sharding.py. Inputs
are abstract (`jax.ShapeDtypeStruct`s): no dataset and no TPU are needed. The data's shapes come
from the config; the puzzle table's rows and the epoch length (for the whole recipe's time) from
the recipe's official dataset (OFFICIAL_DATA) unless `--num_puzzle_identifiers` /
`--epoch_length` give them.

Per chip it prints: argument / output / temporary bytes against the chip's HBM, FLOPs and bytes
accessed per step (XLA's cost analysis of the partitioned program, next to the model's matmul
FLOPs counted on the jaxpr), the collectives of the compiled module with their bytes, a roofline
estimate of the step time (max of FLOPs / peak and bytes / bandwidth; chip figures:
`flops.CHIPS`), the MFU that estimate implies, the whole recipe's estimated time, and the compile
time. A configuration that does not fit in HBM exits with status 2, naming the compiler's largest
buffers and the largest global batch that fits (found by compiling smaller batches).
"""

from __future__ import annotations

import os

# The target's devices come from libtpu's topology description; this process computes on its
# CPU only (and does not probe for a TPU it does not have).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import contextlib
import dataclasses
import functools
import io
import json
import math
import re
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
from jax import ad_checkpoint
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from trm_jax import experiment
from trm_jax import flops as flops_lib
from trm_jax import inference
from trm_jax import model as model_lib
from trm_jax import sharding as sharding_lib
from trm_jax import steps as steps_lib
from trm_jax import train as train_lib
from trm_jax.config import ModelSpec
from trm_jax.data import pipeline
from trm_jax.kernels import execution
from trm_jax.kernels import target as kernel_target

# The official datasets' puzzle-table rows and training examples per epoch (the official
# sampler: one puzzle of each group, all its examples), keyed by (builder, builder config name).
# Sudoku-Extreme and Maze-Hard: 1,000 training puzzles, one puzzle id for all (TRM's
# build_sudoku_dataset.py / build_maze_dataset.py); N-Queens: the DIS script's 800 boards, each
# a group with its 8 dihedral versions (our builder, generated); ARC: the counts of
# our builder on the kaggle JSON (`arc.build_examples`, which matches the official
# build_arc_dataset.py record for record: BUILD_NOTES "Dataset builds"; 3,633,410 / 5,163,277
# training records over 960 / 1,280 tasks).
OFFICIAL_DATA = {
    ("sudoku", "extreme_1k_aug_1000"): dict(num_puzzle_identifiers=1, epoch_length=1000),
    ("maze", "hard_30x30"): dict(num_puzzle_identifiers=1, epoch_length=1000),
    ("maze", "hard_30x30_aug8"): dict(num_puzzle_identifiers=1, epoch_length=1000),
    ("nqueens", "8x8"): dict(num_puzzle_identifiers=1, epoch_length=800),
    ("arc", "arc1_aug_1000"): dict(num_puzzle_identifiers=876_406, epoch_length=3_988),
    ("arc", "arc2_aug_1000"): dict(num_puzzle_identifiers=1_191_730, epoch_length=5_573),
}

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
# An array type with its optional layout: dtype[dims]{layout}.
_SHAPE_LAYOUT_RE = re.compile(r"(" + "|".join(_DTYPE_BYTES) + r")\[([\d,]*)\](\{[^}]*\})?")
# `%name = TYPE op(...)`: an HLO instruction whose op is a collective (async: its -start half).
_COLLECTIVE_RE = re.compile(
    r"^\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.+?)\s+(" + "|".join(COLLECTIVES) + r")(?:-start)?\(")


class DoesNotFit(Exception):
  """The compiler ran out of HBM; the message is its account of the largest buffers."""


def _quiet_libtpu(topology: str) -> None:
  """libtpu, loaded off a TPU VM, asks the metadata server for the accelerator type and the
  worker hostnames and prints errors when it finds none; it also takes a lock that a second
  process (a test worker, another `aot`) would fail on. Nothing here runs on a TPU, so answer it
  locally: the slice's accelerator type (v5e/v6e named by chips, v4/v5p by TensorCores) and
  this host. Values already in the environment are kept."""
  generation, _, dims = topology.partition(":")
  chips = math.prod(int(d) for d in dims.split("x") if d.isdigit()) if dims else 0
  cores = 2 * chips if generation in ("v4", "v5p") else chips
  names = {"v5e": "v5litepod", "v6e": "v6e", "v5p": "v5p", "v4": "v4"}
  for key, value in (("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"), ("TPU_SKIP_MDS_QUERY", "1"),
                     ("TPU_WORKER_HOSTNAMES", "localhost"),
                     ("TPU_ACCELERATOR_TYPE", f"{names.get(generation, generation)}-{cores}")):
    os.environ.setdefault(key, value)


def topology_devices(name: str) -> list:
  """Every device of a TPU slice, e.g. 'v5e:4x4' (16 chips on 4 hosts), from libtpu."""
  from jax.experimental import topologies
  _quiet_libtpu(name)
  try:
    return list(topologies.get_topology_desc(topology_name=name, platform="tpu").devices)
  except Exception as error:  # noqa: BLE001  (libtpu missing, or a name it does not know)
    raise ValueError(
        f"--topology {name!r}: no TPU topology description ({type(error).__name__}: {error}). "
        "It needs libtpu next to jax: pip install \"jax[tpu]=="
        f"{jax.__version__}\"; names look like v5e:2x2, v5e:16x16, v5p:2x2x2, v4:2x2x2, v6e:2x2"
    ) from None


def official_data(cfg: ml_collections.ConfigDict) -> dict[str, int]:
  key = (cfg.data.builder, cfg.data.builder_config.name)
  return dict(OFFICIAL_DATA.get(key, {}))


def collectives(hlo_text: str) -> list[dict[str, Any]]:
  """The collective instructions of an optimized HLO module: op, result type, bytes moved by
  one execution (the result's size; async pairs counted once), grouped by (op, type)."""
  found: dict[tuple[str, str], int] = {}
  for line in hlo_text.splitlines():
    match = _COLLECTIVE_RE.match(line)
    if not match:
      continue
    result_type, op = match.group(1).strip(), match.group(2)
    found[(op, result_type)] = found.get((op, result_type), 0) + 1
  out = []
  for (op, result_type), count in sorted(found.items()):
    shapes = [(dtype, dims) for dtype, dims, _ in _SHAPE_LAYOUT_RE.findall(result_type)]
    if op in ("all-gather", "collective-permute", "all-to-all") and len(shapes) > 1:
      shapes = shapes[-1:]  # an async start's tuple (operand, result): the result
    size = sum(_DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
               for dtype, dims in shapes)
    out.append(dict(op=op, type=result_type, count=count, bytes=size))
  return out


_COMPUTATION_RE = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_INSTRUCTION_RE = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$")
_NO_TRAFFIC = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast",
               "after-all", "partition-id", "replica-id", "iota"}


def _split_type(rest: str) -> tuple[str, str]:
  """'TYPE op(...)...' -> (TYPE, 'op(...)...'); a tuple type is a balanced (...)."""
  if rest.startswith("("):
    depth = 0
    for i, ch in enumerate(rest):
      depth += ch == "("
      depth -= ch == ")"
      if depth == 0:
        return rest[:i + 1], rest[i + 1:].strip()
  head, _, tail = rest.partition(" ")
  return head, tail




def _type_bytes(hlo_type: str) -> int:
  """Bytes of the arrays of an HLO type that live in HBM: XLA:TPU's memory-space assignment
  marks those it keeps on chip `S(1)` in their layout, and they cost no HBM bandwidth."""
  return sum(_DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
             for dtype, dims, layout in _SHAPE_LAYOUT_RE.findall(hlo_type)
             if not re.search(r"S\([1-9]", layout or ""))


def _tuple_elements(hlo_type: str) -> list[str]:
  """The top-level elements of a tuple type '(a, (b, c), d)'."""
  inner, depth, start, out = hlo_type.strip()[1:-1], 0, 0, []
  for i, ch in enumerate(inner):
    depth += ch in "({["
    depth -= ch in ")}]"
    if ch == "," and depth == 0:
      out.append(inner[start:i])
      start = i + 1
  return out + [inner[start:]]


def hlo_bytes_accessed(hlo_text: str, account: list | None = None) -> tuple[float, list[int]]:
  """HBM bytes one execution of an optimized HLO module reads and writes, counting each loop
  body as often as the loop runs: XLA's `cost_analysis()` counts a while loop's body once
  (checked: 10 matmuls in a fori_loop cost what one does), and a recursion step is all loops.
  Each top-level instruction (a fusion as a whole) moves its operands and its result; trip
  counts are read off the loop conditions (`i < N` from 0, as `fori_loop`/`scan` lower).
  Returns (bytes, the trip counts found); `account` collects (bytes, times, op, type, text)
  per instruction."""
  computations: dict[str, list[tuple[str, str, str, str]]] = {}
  entry, current = None, None
  for line in hlo_text.splitlines():
    header = _COMPUTATION_RE.match(line)
    if header and not line.startswith(" "):
      current = header.group(2)
      computations[current] = []
      if header.group(1):
        entry = current
      continue
    if line.startswith("}"):
      current = None
      continue
    match = _INSTRUCTION_RE.match(line) if current else None
    if match:
      hlo_type, rest = _split_type(match.group(2))
      op = rest.split("(", 1)[0].strip()
      computations[current].append((match.group(1), hlo_type, op, rest))
  types = {name: t for insts in computations.values() for name, t, _, _ in insts}
  trips: list[int] = []

  def trip_count(condition: str) -> int:
    constants = [int(m) for _, _, op, rest in computations.get(condition, [])
                 if op == "constant" for m in re.findall(r"constant\((\d+)\)", rest)]
    return max(constants) if constants else 1

  def walk(name: str, times: float) -> float:
    total = 0.0
    for _, hlo_type, op, rest in computations.get(name, []):
      if op == "while":
        body = re.search(r"body=%?([\w.\-]+)", rest).group(1)
        condition = re.search(r"condition=%?([\w.\-]+)", rest).group(1)
        n = trip_count(condition)
        trips.append(n)
        total += walk(body, times * n)
      elif op in ("call", "conditional"):
        called = re.findall(r"(?:to_apply|branch_computations=\{|, )%([\w.\-]+)", rest)
        total += max((walk(c, times) for c in called if c in computations), default=0.0)
      elif op not in _NO_TRAFFIC:
        amount = times * moved(hlo_type, op, rest)
        total += amount
        if account is not None:
          account.append((amount, times, op, hlo_type, rest))
    return total

  def operands_of(rest: str) -> list[str]:
    return re.findall(r"%([\w.\-]+)", rest.split("(", 1)[1].split(")", 1)[0]) \
        if "(" in rest else []

  indexed: dict[str, tuple] = {}

  def index(name: str):
    """A computation's parameters by position, each value's users, its root's operands."""
    if name not in indexed:
      indexed[name] = _index(name)
    return indexed[name]

  def _index(name: str):
    body = computations[name]
    params = {int(re.search(r"parameter\((\d+)\)", r).group(1)): n
              for n, _, o, r in body if o == "parameter"}
    users: dict[str, list[tuple[str, str, str, list[str]]]] = {}
    for n, t, o, r in body:
      for operand in operands_of(r):
        users.setdefault(operand, []).append((n, o, t, r))
    root = body[-1]
    roots = operands_of(root[3]) if root[2] == "tuple" else [root[0]]
    return params, users, roots, {n: (o, t, r) for n, t, o, r in body}

  def read(name: str, value: str, full: int) -> int:
    """Bytes a fused computation reads of `value` (a parameter, or a bitcast of one): the
    slices it takes, through nested fusions; all of it for any other use."""
    _, users, _, _ = index(name)
    total = 0
    for user, op, hlo_type, rest in users.get(value, []):
      operands = operands_of(rest)
      if op == "dynamic-slice" and operands[0] == value:
        total += _type_bytes(hlo_type)
      elif op == "bitcast":
        total += read(name, user, full)
      elif op == "fusion" and (called := re.search(r"calls=%?([\w.\-]+)", rest)):
        sub_params = index(called.group(1))[0]
        total += sum(read(called.group(1), sub_params[i], full)
                     for i, o in enumerate(operands) if o == value)
      elif op == "dynamic-update-slice" and operands[0] == value:
        continue  # written in place: counted as the update, below
      else:
        return full
    return min(total, full)

  def moved(hlo_type: str, op: str, rest: str) -> int:
    """Bytes in and out of one instruction: a slice of a buffer moves the slice, an update in
    place moves the update (as XLA's own cost analysis counts them)."""
    operands = operands_of(rest)
    if op.endswith("-done"):  # the async pair's start counted it
      return 0
    if op.endswith("-start") and hlo_type.startswith("(") and not op.startswith("all-"):
      # (operands, result, context): a copy or slice reads its result's worth and writes it
      result = _tuple_elements(hlo_type)[1]
      return _type_bytes(re.sub(r"\{[^}]*\}", "", result)) + _type_bytes(result)
    if op == "dynamic-slice":
      return 2 * _type_bytes(hlo_type)
    if op == "dynamic-update-slice":
      return 2 * _type_bytes(types.get(operands[1], ""))
    called = re.search(r"calls=%?([\w.\-]+)", rest) if op == "fusion" else None
    if called is None or called.group(1) not in computations:
      return _type_bytes(hlo_type) + sum(_type_bytes(types.get(o, "")) for o in operands)
    params, _, roots, by_name = index(called.group(1))
    out_bytes = _type_bytes(hlo_type)
    for root in roots:  # an output updated in place writes only its update
      root_op, root_type, root_rest = by_name.get(root, ("", "", ""))
      if root_op == "dynamic-update-slice":
        update = operands_of(root_rest)[1]
        out_bytes -= _type_bytes(root_type) - _type_bytes(by_name.get(update, ("", "", ""))[1])
    return out_bytes + sum(read(called.group(1), params[i], _type_bytes(types.get(o, "")))
                           for i, o in enumerate(operands) if i in params)

  return (walk(entry, 1.0) if entry else 0.0), trips


def abstract_batch(spec: ModelSpec, global_batch: int, mesh, *, training: bool = True
                   ) -> dict[str, jax.ShapeDtypeStruct]:
  """A global batch as `main` feeds it: the model keys, and for training the scheme's
  `batch_keys` (shapes and dtypes as the scheme declares them)."""
  sharding = sharding_lib.batch_sharding(mesh)
  shapes = {"inputs": (global_batch, spec.seq_len), "labels": (global_batch, spec.seq_len),
            "puzzle_identifiers": (global_batch,)}
  batch = {k: jax.ShapeDtypeStruct(shapes[k], jnp.int32, sharding=sharding)
           for k in pipeline.MODEL_KEYS}
  if training:
    scheme = model_lib.scheme_of(spec)
    for key in scheme.batch_keys:
      row_shape, dtype = scheme.batch_key_shape(key)
      batch[key] = jax.ShapeDtypeStruct((global_batch, *row_shape), dtype, sharding=sharding)
  return batch


def abstract_state(model_cfg, train_cfg, batch, total_steps: int, mesh):
  """The train state `main` would build (jax.eval_shape of `train.init_state`: nothing is
  allocated), as ShapeDtypeStructs carrying the state's shardings."""
  plain = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}
  state = jax.eval_shape(lambda b, key: train_lib.init_state(model_cfg, train_cfg, b,
                                                             total_steps, key),
                         plain, jax.random.key(0))
  shardings = sharding_lib.tree_shardings(mesh, state)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      state, shardings)


def _compiled_report(lowered, chip: flops_lib.Chip | None, matmul_flops: float) -> dict[str, Any]:
  """Compiles `lowered`; per device: memory, cost and collectives of the compiled module and
  the roofline estimate. `matmul_flops`: the program's matmul FLOPs per device counted on its
  jaxpr (loops by trip count), since XLA's cost analysis counts a loop body once."""
  start = time.time()
  try:
    compiled = lowered.compile()
  except Exception as error:  # noqa: BLE001  (XlaRuntimeError; its text is the account)
    text = str(error)
    if "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text:
      raise DoesNotFit(text) from None
    raise
  seconds = time.time() - start
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  hlo = compiled.as_text()
  hbm_accessed, trips = hlo_bytes_accessed(hlo)
  report = dict(
      compile_seconds=seconds,
      argument_bytes=int(memory.argument_size_in_bytes),
      output_bytes=int(memory.output_size_in_bytes),
      alias_bytes=int(memory.alias_size_in_bytes),
      temp_bytes=int(memory.temp_size_in_bytes),
      code_bytes=int(memory.generated_code_size_in_bytes),
      xla_flops=float(cost.get("flops", 0.0)),
      xla_bytes_accessed=float(cost.get("bytes accessed", 0.0)),
      matmul_flops=float(matmul_flops),
      bytes_accessed=hbm_accessed,
      loop_trip_counts=trips,
      collectives=collectives(hlo),
  )
  # Donated arguments share their buffers with the outputs they alias.
  report["peak_bytes"] = (report["argument_bytes"] + report["output_bytes"]
                          - report["alias_bytes"] + report["temp_bytes"] + report["code_bytes"])
  if chip is not None:
    compute_s = report["matmul_flops"] / (chip.bf16_tflops * 1e12)
    memory_s = report["bytes_accessed"] / (chip.hbm_tb_per_s * 1e12)
    report.update(hbm_bytes=chip.hbm_bytes, compute_seconds=compute_s, memory_seconds=memory_s,
                  step_seconds=max(compute_s, memory_s),
                  bound="compute" if compute_s >= memory_s else "memory")
  return report


@dataclasses.dataclass
class SliceRecipe:
  """What to compile: a recipe on one TPU slice."""
  cfg: ml_collections.ConfigDict
  topology: str
  devices: list
  num_puzzle_identifiers: int
  epoch_length: int

  @property
  def chip(self) -> flops_lib.Chip | None:
    return flops_lib.chip(self.devices[0].device_kind)

  @property
  def hosts(self) -> int:
    return len({d.process_index for d in self.devices})

  def mesh(self):
    return sharding_lib.make_mesh(tuple(self.cfg.mesh_shape), devices=self.devices)

  @property
  def settings(self) -> execution.Settings:
    """The kernels of `config.execution`, as `trm_jax.main` takes them."""
    return experiment.execution_settings(self.cfg)

  def model_config(self):
    model_cfg = ml_collections.ConfigDict(self.cfg.model.to_dict())
    model_cfg.num_puzzle_identifiers = sharding_lib.table_rows(self.num_puzzle_identifiers)
    return model_cfg

  def total_steps(self, global_batch: int) -> int:
    steps = max(1, int(self.cfg.train.epochs * self.epoch_length / global_batch))
    max_steps = self.cfg.train.get("max_steps", 0)
    return min(steps, max_steps) if max_steps else steps


def lower_train(target: SliceRecipe, global_batch: int):
  """(lowered training step, spec, abstract state, abstract batch, total steps)."""
  mesh = target.mesh()
  model_cfg = target.model_config()
  spec = ModelSpec.from_config(model_cfg)
  total_steps = target.total_steps(global_batch)
  batch = abstract_batch(spec, global_batch, mesh)
  state = abstract_state(model_cfg, target.cfg.train, batch, total_steps, mesh)
  with execution.using(target.settings):
    lowered = steps_lib.train_step(spec, target.cfg.train, total_steps, mesh, state, batch)
  return lowered, spec, state, batch, total_steps


def compile_train(target: SliceRecipe, global_batch: int) -> tuple[dict[str, Any], ModelSpec]:
  """The training step's compiled report at `global_batch` (raises DoesNotFit)."""
  lowered, spec, state, batch, total_steps = lower_train(target, global_batch)
  step = lambda s, b, spec: train_lib.train_step(s, b, spec=spec, train_cfg=target.cfg.train,
                                                 total_steps=total_steps)
  chips = len(target.devices)
  # Matmul FLOPs per device on the jaxpr: the program's own (its remat included) for the
  # roofline, the model's (no remat, what MFU credits) for the MFU. A fused attention kernel
  # hides its matmuls from the counter; they are the XLA path's (up to its padding).
  counted = dataclasses.replace(target.settings, attention="xla")
  with kernel_target.lowering_for(target.mesh(), sharding_lib.BATCH_AXES):
    with execution.using(counted):
      executed = flops_lib.matmul_flops(functools.partial(step, spec=spec), state,
                                        batch) / chips
    model = flops_lib.model_flops(spec, step, state, batch) / chips
  report = _compiled_report(lowered, target.chip, executed)
  report["model_flops"] = model
  report["state_bytes"] = sum(math.prod(x.shape) * x.dtype.itemsize
                              for x in jax.tree.leaves(state))
  report["state"] = state
  return report, spec


def compile_eval(target: SliceRecipe, spec: ModelSpec, state) -> dict[str, Any]:
  mesh = target.mesh()
  strategy = inference.Strategy.from_config(target.cfg.eval)
  rows = abstract_batch(spec, target.cfg.eval.global_batch_size, mesh, training=False)
  params = train_lib.eval_params(state)
  with execution.using(target.settings):
    lowered = steps_lib.eval_step(spec, strategy, mesh, params, rows)
  counted = dataclasses.replace(target.settings, attention="xla")  # (see compile_train)
  with kernel_target.lowering_for(mesh, sharding_lib.BATCH_AXES), execution.using(counted):
    executed = flops_lib.matmul_flops(
        functools.partial(inference.eval_batch, spec=spec, strategy=strategy), params, rows)
  return _compiled_report(lowered, target.chip, executed / len(target.devices))


def largest_fitting_batch(target: SliceRecipe, known_fit: int | None = None,
                          known_fail: int | None = None, log=print) -> int | None:
  """The largest global batch (a multiple of the device count) whose training step the
  compiler fits in HBM: a line through two compiled sizes' peak bytes gives the guess, then
  compiles move it down (or up) to the boundary. None when not even one row per device fits."""
  unit = len(target.devices)
  if target.chip is None:
    raise ValueError("largest_fitting_batch: no HBM figure for this device kind")
  hbm = target.chip.hbm_bytes

  def peak(batch):
    try:
      report, _ = compile_train(target, batch)
    except DoesNotFit:
      log(f"  global batch {batch}: does not fit")
      return None
    log(f"  global batch {batch}: fits, {report['peak_bytes'] / 2**30:.2f} GiB per chip")
    return report["peak_bytes"]

  if known_fail is not None and known_fail <= unit:
    return None
  small, large = unit, 2 * unit
  p_small = peak(small)
  p_large = None if known_fail is not None and large >= known_fail else peak(large)
  if p_small is None:
    return None
  if p_large is None:
    return small
  per_unit = max(p_large - p_small, 1)
  guess = max(1, int((hbm - p_small) // per_unit) + 1) * unit
  if known_fail is not None:
    guess = min(guess, known_fail - unit)
  fit, fail = large, known_fail
  if known_fit is not None:
    fit = max(fit, known_fit)
  guess = max(guess, fit)
  # Bracket, then bisect in units of the device count (each probe is one compile).
  while fail is None or fail - fit > unit:
    if guess <= fit or (fail is not None and guess >= fail):
      guess = fit + ((fail - fit) // unit // 2) * unit if fail is not None else fit * 2
    if peak(guess) is None:
      fail = guess
    else:
      fit = guess
    if fail is None:
      guess = int(fit * 1.25) // unit * unit
  return fit


def _gib(n: float) -> str:
  return f"{n / 2**30:.2f} GiB"


def _tflop(n: float) -> str:
  return f"{n / 1e12:.3f} TFLOP"


def describe(name: str, report: dict[str, Any], chip: flops_lib.Chip | None,
             global_batch: int, num_devices: int) -> list[str]:
  lines = [f"{name} step, global batch {global_batch} ({global_batch / num_devices:g} rows per "
           f"chip), compiled in {report['compile_seconds']:.1f}s"]
  hbm = f" of {_gib(chip.hbm_bytes)} HBM" if chip else ""
  lines.append(f"  memory per chip: {_gib(report['peak_bytes'])}{hbm} = arguments "
               f"{_gib(report['argument_bytes'])} + outputs {_gib(report['output_bytes'])} - "
               f"donated {_gib(report['alias_bytes'])} + temporaries "
               f"{_gib(report['temp_bytes'])} + code {_gib(report['code_bytes'])}")
  model = (f", the model's {_tflop(report['model_flops'])}" if "model_flops" in report
           else "")
  lines.append(f"  per chip per step: matmuls {_tflop(report['matmul_flops'])}{model}; "
               f"{report['bytes_accessed'] / 1e9:.2f} GB of HBM traffic with loops "
               f"{report['loop_trip_counts']} counted by trip (XLA's cost analysis, loop bodies "
               f"once: {_tflop(report['xla_flops'])}, {report['xla_bytes_accessed'] / 1e9:.2f} GB)")
  if report["collectives"]:
    lines.append("  collectives in the module (op x count: bytes each):")
    for c in report["collectives"]:
      lines.append(f"    {c['op']} x{c['count']}: {c['bytes'] / 2**20:.2f} MiB  {c['type']}")
  else:
    lines.append("  collectives in the module: none")
  if chip is not None:
    mfu = ""
    if "model_flops" in report and report["step_seconds"] > 0:
      report["mfu"] = report["model_flops"] / report["step_seconds"] / (chip.bf16_tflops * 1e12)
      mfu = f", MFU {100 * report['mfu']:.1f}%"
    lines.append(f"  roofline on {chip.name} ({chip.bf16_tflops:g} TFLOP/s, "
                 f"{chip.hbm_tb_per_s:g} TB/s): {report['step_seconds'] * 1e3:.1f} ms per step, "
                 f"{report['bound']}-bound (compute {report['compute_seconds'] * 1e3:.1f} ms, "
                 f"memory {report['memory_seconds'] * 1e3:.1f} ms){mfu}")
  return lines


def run(cfg: ml_collections.ConfigDict, topology: str, *, num_puzzle_identifiers: int = 0,
        epoch_length: int = 0, evaluation: bool = True, max_batch: bool = False,
        fit_search: bool = True, log=print) -> dict[str, Any]:
  """Compiles and reports; returns the JSON-able result. Raises DoesNotFit (after reporting
  the largest buffers and searching the largest batch that fits) when the step does not fit."""
  experiment.execution_settings(cfg)  # checked before anything compiles
  official = official_data(cfg)
  num_puzzle_identifiers = (num_puzzle_identifiers or official.get("num_puzzle_identifiers")
                            or cfg.model.num_puzzle_identifiers)
  epoch_length = epoch_length or official.get("epoch_length") or 0
  devices = topology_devices(topology)
  target = SliceRecipe(cfg, topology, devices, int(num_puzzle_identifiers), int(epoch_length))
  global_batch = cfg.train.global_batch_size
  fields = [("train.global_batch_size", global_batch)]
  if evaluation:
    fields.append(("eval.global_batch_size", cfg.eval.global_batch_size))
  for field, value in fields:
    if value % len(devices):
      raise ValueError(f"config field '{field}' = {value}: must be a multiple of the "
                       f"{len(devices)} chips of {topology} (batches are split over them)")
  chip = target.chip
  mesh = target.mesh()
  log(f"{topology}: {len(devices)} x {devices[0].device_kind} on {target.hosts} host(s), mesh "
      f"{dict(mesh.shape)}; puzzle table {target.num_puzzle_identifiers:,} rows"
      f"{'' if official.get('num_puzzle_identifiers') else ' (config)'}")
  result: dict[str, Any] = dict(topology=topology, chips=len(devices), hosts=target.hosts,
                                device_kind=devices[0].device_kind, mesh=dict(mesh.shape),
                                global_batch=global_batch,
                                num_puzzle_identifiers=target.num_puzzle_identifiers,
                                chip=dataclasses.asdict(chip) if chip else None)
  try:
    train, spec = compile_train(target, global_batch)
  except DoesNotFit as error:
    log(f"train step, global batch {global_batch}: does NOT fit on {topology}. The compiler: "
        f"{_first_line(str(error))}")
    log("largest buffers per chip:")
    buffers = largest_buffers(target, global_batch)
    for size, what in buffers:
      log(f"  {_gib(size)}  {what}")
    result["largest_buffers"] = [dict(bytes=size, what=what) for size, what in buffers]
    result.update(fits=False, error=str(error))
    if fit_search:
      log("searching the largest global batch that fits (one compile per probe):")
      fits = largest_fitting_batch(target, known_fail=global_batch, log=log)
      result["largest_fitting_batch"] = fits
      log(f"largest global batch that fits: {fits}" if fits else
          "not even one row per chip fits")
    raise DoesNotFit(json.dumps(result)) from None
  state = train.pop("state")
  result.update(fits=chip is None or train["peak_bytes"] <= chip.hbm_bytes, train=train)
  for line in describe("train", train, chip, global_batch, len(devices)):
    log(line)
  if chip is not None and epoch_length:
    total = target.total_steps(global_batch)
    result.update(total_steps=total, recipe_hours=total * train["step_seconds"] / 3600)
    log(f"  whole recipe: {total:,} steps ({cfg.train.epochs:,} epochs of {epoch_length:,} "
        f"examples) ~ {result['recipe_hours']:.1f} h at the roofline estimate, evaluation excluded")
  if evaluation:
    evaluate = compile_eval(target, spec, state)
    result["eval"] = evaluate
    for line in describe("eval", evaluate, chip, cfg.eval.global_batch_size, len(devices)):
      log(line)
  if max_batch and chip is not None:
    log("largest global batch that fits (one compile per probe):")
    result["largest_fitting_batch"] = largest_fitting_batch(target, known_fit=global_batch,
                                                            log=log)
    log(f"largest global batch that fits: {result['largest_fitting_batch']}")
  return result


_SHAPE_AT_START = re.compile(r"^\s*(\w+)\[([\d,]*)\]\s*(.*)$")


def largest_buffers(target: SliceRecipe, global_batch: int, top: int = 5) -> list[tuple[int, str]]:
  """The largest buffers of the training step per chip, largest first, as (bytes, what), the
  `top` of each kind:
  the train state's arrays (split as the mesh splits them) and the activations the backward
  pass keeps (`jax.ad_checkpoint.print_saved_residuals` of the step's loss, with the source
  line that makes each; a residual's batch dimension is split over the mesh's batch axes).
  XLA:TPU's out-of-memory error gives only the total, so this is the account it lacks."""
  _, spec, state, batch, _ = lower_train(target, global_batch)
  arguments, saved = [], []
  for key_path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    shard = leaf.sharding.shard_shape(leaf.shape)
    arguments.append((math.prod(shard) * leaf.dtype.itemsize,
                      f"argument {sharding_lib._path(key_path)} {leaf.dtype}{list(shard)} "
                      "(state)"))
  mesh = target.mesh()
  batch_shards = math.prod(mesh.shape[a] for a in sharding_lib.BATCH_AXES)
  printed = io.StringIO()

  def residuals(state, batch):  # traced: the step's loss closes over the abstract state
    loss_fn, trainable, rows, _ = train_lib.step_loss(state, batch, spec)
    ad_checkpoint.print_saved_residuals(lambda t, r: loss_fn(t, r)[0], trainable, rows)
    return 0

  with (contextlib.redirect_stdout(printed), execution.using(target.settings),
        kernel_target.lowering_for(mesh, sharding_lib.BATCH_AXES)):
    jax.eval_shape(residuals, state, batch)
  for line in printed.getvalue().splitlines():
    match = _SHAPE_AT_START.match(line)
    if not match or match.group(1) not in _DTYPE_SHORT or "from the argument" in line:
      continue  # (an argument kept for the backward pass is the state's buffer, listed above)
    dims = [int(d) for d in match.group(2).split(",") if d]
    # The batch dimension (or one that folds it with others, e.g. batch x tokens) splits.
    split = next((i for i, d in enumerate(dims) if d % global_batch == 0), None)
    if split is not None:
      dims[split] //= batch_shards
    size = math.prod(dims) * _DTYPE_SHORT[match.group(1)]
    saved.append((size, f"saved for the backward pass: {match.group(1)}{dims} "
                        f"{match.group(3)}"))
  largest = lambda items: sorted(items, key=lambda item: -item[0])[:top]
  return sorted(largest(arguments) + largest(saved), key=lambda item: -item[0])


# print_saved_residuals' short dtype names.
_DTYPE_SHORT = {"f32": 4, "bf16": 2, "f16": 2, "i32": 4, "u32": 4, "i8": 1, "u8": 1, "bool": 1,
                "f64": 8, "i64": 8, "i16": 2}


def _first_line(text: str) -> str:
  lines = [line for line in text.splitlines() if line.strip()]
  return next((line for line in lines if "RESOURCE_EXHAUSTED" in line or "memory" in line),
              lines[0] if lines else text)


def _define_flags() -> None:
  """The command line's flags, defined only when run as a program (`trm_jax.main` defines
  --config too, and both modules may be imported into one process)."""
  config_flags.DEFINE_config_file("config", None, "experiment config file[:variant]",
                                  lock_config=True)
  flags.DEFINE_string("topology", None, "TPU slice, e.g. v5e:4x4 (16 chips), v5e:16x16 "
                      "(256 chips, 64 hosts), v5p:2x2x2, v4:2x2x2, v6e:2x2")
  flags.DEFINE_integer("num_puzzle_identifiers", 0, "puzzle-table rows (0: the recipe's "
                       "official dataset's)")
  flags.DEFINE_integer("epoch_length", 0, "training examples per epoch, for the whole "
                       "recipe's time (0: the official dataset's)")
  flags.DEFINE_bool("eval", True, "also compile the evaluation batch")
  flags.DEFINE_bool("max_batch", False, "also search the largest global batch that fits (a "
                    "few more compiles)")
  flags.DEFINE_bool("fit_search", True, "when the step does not fit, compile smaller batches "
                    "to find the largest that does")
  flags.DEFINE_string("json", None, "write the result as JSON to this file")


def main(argv):
  del argv
  from trm_jax import console
  console.quiet_unless_verbose()
  args = flags.FLAGS
  cfg = ml_collections.ConfigDict(args.config.to_dict())
  try:
    result = run(cfg, args.topology, num_puzzle_identifiers=args.num_puzzle_identifiers,
                 epoch_length=args.epoch_length, evaluation=args.eval,
                 max_batch=args.max_batch, fit_search=args.fit_search)
    status = 0
  except DoesNotFit as error:
    result, status = json.loads(str(error)), 2
  except ValueError as error:
    sys.exit(f"error: {error}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1, default=str)
  sys.exit(status)


if __name__ == "__main__":
  if moved := experiment.moved_flag(sys.argv):  # before the config flag fails on it
    sys.exit(f"error: {moved}")
  _define_flags()
  flags.mark_flags_as_required(["config", "topology"])
  app.run(main)
