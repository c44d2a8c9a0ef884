r"""Where a training step's memory traffic and matmul time go, read off the traced and compiled
step on any host: no accelerator, nothing runs.

Issue 27 asked why the DIS ARC-medium training step on an H200 reached 0.26x the official
PyTorch code while evaluation reached 0.91x, with no GPU to profile on. Everything a backward
pass costs beyond the forward is decided before XLA sees the program (what autodiff keeps, the
dtypes of the backward's dots) or is visible in a CPU compile (buffers, fusions, converts), so
this script reports those, per (config, target, matmul implementation, remat policy):

  residual GiB   what the step's loss (`train.step_loss`) keeps from forward to backward
                 (jax's `saved_residuals`), of which fp32, and the largest sources (function,
                 op): the tensors a step writes and reads again, the bulk of its temporaries
                 (before XLA, which may fuse some away)
  TFLOP / dtypes the step's matmul FLOPs (dot_generals of the traced train step, loops
                 multiplied out; trm_jax/flops.py; target gpu: without cuDNN's attention, a
                 custom call), split by operand and output dtype. A mixed f32 x bf16 dot is
                 what autodiff makes of a bf16 dot asked for an fp32 output (its cotangent is
                 fp32): unless XLA folds the convert back, a GPU runs it as an fp32 GEMM (TF32
                 tensor cores at best: half the bf16 rate, twice the operand bytes)
  CPU compile    (target cpu, at --compile_batch) XLA's flops over the analytic count (XLA
                 counts a loop body once), bytes accessed, temporaries, and the HLO's fusions,
                 converts, copies, transposes, dots and custom calls

Targets: `cpu` is this host; `gpu` traces the step as for one NVIDIA GPU
(trm_jax/kernels/target.py: XLA's dots, cuDNN's fused attention, whose residuals are q, k, v,
the output and the softmax statistics) without compiling it, so its residuals are those of the
GPU program at the real batch size. Tracing cuDNN's attention on a host without CUDA needs its
version check answered: this script answers it with a fixed version (nothing is run).

  python benchmarks/step_anatomy.py --configs arc_dis_medium --batch_size 512 \
      --targets gpu,cpu --matmuls xla,xla_native --compile_batch 8
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import json
import math
import pathlib
import re
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
for path in (REPO, REPO / "benchmarks"):
  if str(path) not in sys.path:
    sys.path.insert(0, str(path))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.extend import core as jax_core  # noqa: E402

import bench_trm  # noqa: E402
from trm_jax import flops, train  # noqa: E402
from trm_jax.config import ModelSpec  # noqa: E402
from trm_jax.kernels import execution  # noqa: E402
from trm_jax.kernels import target as target_lib  # noqa: E402

TOTAL_STEPS = 100_000
HLO_OPS = ("fusion", "convert", "copy", "transpose", "dot", "custom-call")


def build(name: str, remat: str, batch_size: int):
  """(config, spec, abstract train state, abstract batch) of a bench_trm config."""
  config = bench_trm.CONFIGS[name]()
  config.model.remat = remat
  spec = ModelSpec.from_config(config.model)
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in bench_trm.random_batch(
      spec.seq_len, spec.vocab_size, spec.num_puzzle_identifiers, 1).items()}
  batch = {k: jax.ShapeDtypeStruct((batch_size,) + v.shape[1:], v.dtype) for k, v in batch.items()}
  state = jax.eval_shape(lambda b: train.init_state(config.model, config.train, b, TOTAL_STEPS,
                                                    jax.random.key(0)), batch)
  return config, spec, state, batch


@contextlib.contextmanager
def tracing_for(target: str):
  """Trace for `target`; for `gpu`, cuDNN's attention is traced on a host without CUDA."""
  if target == "cpu":
    yield
    return
  from jax._src.cudnn import fused_attention_stablehlo as cudnn_attention
  saved = cudnn_attention.check_cudnn_version
  cudnn_attention.check_cudnn_version = lambda *args, **kwargs: 90800
  try:
    with target_lib.lowering_for(target_lib.Target("gpu", 1, nvidia=True)):
      yield
  finally:
    cudnn_attention.check_cudnn_version = saved


def residuals(spec: ModelSpec, state, batch) -> dict:
  """Bytes autodiff keeps between the forward and the backward of what the train step
  differentiates (`train.step_loss`), by source."""
  from jax._src.ad_checkpoint import saved_residuals
  table = state.get("puzzle_emb")
  rows = None if table is None else jax.ShapeDtypeStruct(
      (batch["inputs"].shape[0], table.shape[1]), table.dtype)

  def loss(trainable, rows, state, batch):
    state = jax.lax.stop_gradient(state)  # differentiated, as in the step: trainable and rows
    loss_fn = train.step_loss(dict(state, trainable=trainable), batch, spec)[0]
    return loss_fn(trainable, rows)[0]

  total = fp32 = 0
  sources = collections.Counter()
  for aval, why in saved_residuals(loss, state["trainable"], rows, state, batch):
    if not hasattr(aval, "dtype") or why.startswith("from the argument"):
      continue  # the inputs live through the step anyway
    size = math.prod(aval.shape) * aval.dtype.itemsize
    total += size
    fp32 += size if aval.dtype == jnp.float32 else 0
    where = re.search(r"from \S+?:\d+:\d+ \((\S+)\)", why)
    op = why.split(" from ")[0].removeprefix("output of ").removeprefix("jitted function ")
    sources[f"{where.group(1) if where else '?'}:{op.strip(chr(39))} {aval.dtype}"] += size
  return {"bytes": total, "fp32_bytes": fp32, "top": sources.most_common(5)}


def dot_flops_by_dtype(fn, *args) -> dict[str, int]:
  """Matmul FLOPs of `fn(*args)` by 'lhs x rhs -> out' dtypes (loops multiplied out)."""
  counts: collections.Counter = collections.Counter()

  def walk(jaxpr, times):
    for eqn in jaxpr.eqns:
      if eqn.primitive.name == "dot_general":
        lhs, rhs = (v.aval for v in eqn.invars)
        key = f"{lhs.dtype} x {rhs.dtype} -> {eqn.outvars[0].aval.dtype}"
        counts[key] += times * flops._dot_general_flops(eqn)  # noqa: SLF001 (one definition)
      inner = times * (eqn.params["length"] if eqn.primitive.name == "scan" else 1)
      for value in eqn.params.values():
        for sub in value if isinstance(value, (tuple, list)) else (value,):
          if isinstance(sub, jax_core.ClosedJaxpr):
            walk(sub.jaxpr, inner)
          elif isinstance(sub, jax_core.Jaxpr):
            walk(sub, inner)

  walk(jax.make_jaxpr(fn)(*args).jaxpr, 1)
  return dict(counts.most_common())


def compiled_stats(step, state, batch, model_flops: int) -> dict:
  """XLA's view of the step compiled for this CPU."""
  compiled = jax.jit(step, donate_argnums=0).lower(state, batch).compile()
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, list) else cost) or {}
  memory = compiled.memory_analysis()
  ops = collections.Counter(re.findall(r"= \S+ ([a-z][\w-]*)\(", compiled.as_text()))
  return {"xla_flops_over_analytic": cost.get("flops", 0) / model_flops,
          "bytes_accessed": cost.get("bytes accessed", 0),
          "temp_bytes": memory.temp_size_in_bytes if memory else None,
          "hlo_ops": {op: ops[op] for op in HLO_OPS}}


def anatomy(name: str, target: str, matmul: str, remat: str, batch_size: int,
            compile_batch: int) -> dict:
  config, spec, state, batch = build(name, remat, batch_size)
  step = functools.partial(train.train_step, spec=spec, train_cfg=config.train,
                           total_steps=TOTAL_STEPS)
  settings = execution.Settings(matmul=matmul, attention=config.execution.attention)
  with tracing_for(target), execution.using(settings):
    result = {"config": name, "target": target, "matmul": matmul, "remat": remat,
              "batch": batch_size, "residuals": residuals(spec, state, batch),
              "dot_flops": dot_flops_by_dtype(step, state, batch)}
  if target == "cpu" and compile_batch:
    _, _, small_state, small_batch = build(name, remat, compile_batch)
    small_flops = flops.model_flops(spec, functools.partial(
        train.train_step, train_cfg=config.train, total_steps=TOTAL_STEPS), small_state,
        small_batch)
    with execution.using(settings):
      result["cpu_compile"] = dict(batch=compile_batch, **compiled_stats(
          step, small_state, small_batch, small_flops))
  return result


def report(results: list[dict]) -> None:
  gib = lambda b: f"{b / 2**30:.2f}"
  print("| config | target | matmul | remat | batch | residual GiB (fp32) | matmul TFLOP by "
        "operand dtypes | largest residuals (GiB) |")
  print("|---|---|---|---|---|---|---|---|")
  for r in results:
    res, dots = r["residuals"], r["dot_flops"]
    total = sum(dots.values())
    split = "; ".join(f"{k} {100 * v / total:.0f}%" for k, v in dots.items()
                      if v >= total / 200)
    top = "; ".join(f"{k} {gib(v)}" for k, v in res["top"][:3])
    print(f"| {r['config']} | {r['target']} | {r['matmul']} | {r['remat']} | {r['batch']} | "
          f"{gib(res['bytes'])} ({gib(res['fp32_bytes'])}) | {total / 1e12:.2f}: {split} | "
          f"{top} |")
  compiled = [r for r in results if "cpu_compile" in r]
  if compiled:
    print("\nCompiled for this CPU (XLA flops count a loop body once):\n")
    print("| config | matmul | remat | batch | XLA flops / analytic | bytes accessed GiB | "
          "temp GiB | " + " | ".join(HLO_OPS) + " |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(HLO_OPS))
    for r in compiled:
      c = r["cpu_compile"]
      temp = "-" if c["temp_bytes"] is None else gib(c["temp_bytes"])
      print(f"| {r['config']} | {r['matmul']} | {r['remat']} | {c['batch']} | "
            f"{c['xla_flops_over_analytic']:.3f} | {gib(c['bytes_accessed'])} | {temp} | "
            + " | ".join(str(c["hlo_ops"][op]) for op in HLO_OPS) + " |")


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 1)[1])
  p.add_argument("--configs", default="arc_dis_medium",
                 help=f"comma list of {sorted(bench_trm.CONFIGS)}")
  p.add_argument("--targets", default="gpu,cpu", help="comma list of gpu, cpu")
  p.add_argument("--matmuls", default="xla,xla_native",
                 help="comma list of matmul impls (execution.matmul)")
  p.add_argument("--remats", default="none", help="comma list of remat policies (model.remat)")
  p.add_argument("--batch_size", type=int, default=512, help="batch of the traced step")
  p.add_argument("--compile_batch", type=int, default=8,
                 help="batch of the CPU compile (0: no compile); its costs scale with batch")
  p.add_argument("--json_out", default=None)
  args = p.parse_args(argv)
  jax.config.update("jax_platforms", "cpu")  # an anatomy, not a run: never take a device
  split = lambda text: [t for t in text.split(",") if t]
  results = []
  for name in split(args.configs):
    for target in split(args.targets):
      for matmul in split(args.matmuls):
        for remat in split(args.remats):
          print(f"tracing {name} for {target}, matmul={matmul}, remat={remat} ...",
                file=sys.stderr, flush=True)
          results.append(anatomy(name, target, matmul, remat, args.batch_size,
                                 args.compile_batch))
  print(f"jax {jax.__version__}, host {bench_trm.cpu_model()}\n")
  report(results)
  if args.json_out:
    pathlib.Path(args.json_out).write_text(json.dumps(results, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
