r"""Throughput, compile time and memory of trm_jax training and evaluation steps.

For each (config, batch size, what) this measures, on the default JAX backend:
  train - compile time of the jitted `train.train_step` (donated state; `.lower().compile()`),
          then the median seconds per call over --repeats calls after --warmup calls. One call
          = one supervision step of every row + one optimiser update (AdamATan2, sparse
          sign-SGD on the puzzle table, EMA), as in the official trainer.
  eval  - compile time and median seconds of one jitted `inference.eval_batch` call, i.e. a full
          evaluation batch (all halt_max_steps supervision steps from fresh latents).
  memory - on GPU/TPU the device's `peak_bytes_in_use`; always the process peak RSS; and XLA's
          own estimate from `compiled.memory_analysis()` (temp + argument + output - aliased,
          so donated buffers count once).
  TFLOP/s, MFU - the step's matmul FLOPs (`trm_jax.flops.matmul_flops` on the traced step,
          with XLA's dot and no remat: model FLOPs) over the median time, and that over the
          device's bf16 matrix peak (trm_jax.flops.peak_tflops, or --peak_tflops; none on CPU).
Every (config, batch, what) runs in a fresh subprocess (this script re-invokes itself with
`--one`), so the peak RSS / device peak is that measurement's own.

Batches are random tokens (fixed seed): inputs and labels in [1, vocab), puzzle ids in
[0, num_puzzle_identifiers). The puzzle table has 16 rows (it only matters for memory).

Full measurements (official sizes; examples/s = batch / median):

  python benchmarks/bench_trm.py --configs sudoku_mlp_t,sudoku_att,maze_att,arc_att \
      --batch_sizes 32 --repeats 5 --warmup 1 --json_out /tmp/bench_trm_cpu.json
  # on a GPU host, larger batches (the official global batch is 768):
  python benchmarks/bench_trm.py --configs sudoku_mlp_t,sudoku_att,maze_att,arc_att \
      --batch_sizes 64,256,768 --repeats 10 --warmup 2 --json_out /tmp/bench_trm_gpu.json
  # a model-config override, and XLA's dot instead of the CPU kernels (execution.matmul):
  python benchmarks/bench_trm.py --configs sudoku_mlp_t --batch_sizes 32 \
      --model_overrides remat=full --matmul xla

Quick smoke run (a minute on 2 CPU cores):

  python benchmarks/bench_trm.py --configs sudoku_mlp_t,sudoku_att --batch_sizes 2 \
      --h_cycles 1 --l_cycles 1 --halt_max_steps 2 --repeats 2
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import pathlib
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any, Callable

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from trm_jax import host_memory  # noqa: E402  (imports no jax)

# Heavy imports (jax, the rest of trm_jax) happen inside functions: the parent process never
# initialises a backend (on GPU that would pre-allocate device memory the children need),
# compare_official.py's torch children can import this module without paying for jax, and a
# child can apply host_memory.configure before JAX starts its backend.

RESULT_PREFIX = "BENCH_RESULT_JSON "
NUM_PUZZLE_IDENTIFIERS = 16
TOTAL_STEPS = 100_000  # Only shapes the (constant after warmup) learning-rate schedule.
SEED = 0


def _experiment(module: str, variant: str | None) -> Callable[[], Any]:
  """A config factory from experiments/<module>.py:get_config(variant) (preset + train recipe)."""
  def make():
    config = importlib.import_module(f"experiments.{module}").get_config(variant)
    config.model.num_puzzle_identifiers = NUM_PUZZLE_IDENTIFIERS
    return config
  return make


# name -> factory of a ConfigDict with `.model` (official sizes, trm_jax/config.py presets) and
# `.train` (the official recipe of that task); the scheme is the config's (`*_dis`: DIS).
CONFIGS: dict[str, Callable[[], Any]] = {
    "sudoku_mlp_t": _experiment("sudoku", "mlp"),
    "sudoku_att": _experiment("sudoku", "att"),
    "maze_att": _experiment("maze", None),
    "arc_att": _experiment("arc", "arc1"),
    "nqueens_dis": _experiment("nqueens", "dis"),
    "arc_dis_compact": _experiment("arc", "dis_compact"),
    "arc_dis_medium": _experiment("arc", "dis_medium"),
}


# --------------------------------------------------------------------------------------------
# Config overrides.

def parse_overrides(text: str | None) -> list[tuple[str, str]]:
  pairs = []
  for item in (text or "").split(","):
    item = item.strip()
    if not item:
      continue
    if "=" not in item:
      raise SystemExit(f"--model_overrides: expected key=value, got {item!r}")
    key, raw = item.split("=", 1)
    pairs.append((key.strip(), raw.strip()))
  return pairs


def apply_model_overrides(model_cfg, pairs: list[tuple[str, str]]):
  """Set `key=value` pairs on an ml_collections ConfigDict, keeping each field's type.

  Keys the ConfigDict does not have yet are added (ModelSpec then rejects fields it does not
  know, naming them).
  """
  from trm_jax import config as config_lib
  for key, raw in pairs:
    model_cfg[key] = config_lib.parse_field_value(raw, model_cfg.get(key, None))


def shrink_overrides(args) -> list[tuple[str, str]]:
  """The --h_cycles / --l_cycles / --halt_max_steps flags as overrides (for quick runs)."""
  pairs = []
  for flag, key in (("h_cycles", "H_cycles"), ("l_cycles", "L_cycles"),
                    ("halt_max_steps", "halt_max_steps")):
    value = getattr(args, flag)
    if value is not None:
      pairs.append((key, str(value)))
  return pairs


def build_config(name: str, args):
  if name not in CONFIGS:
    raise SystemExit(f"unknown config {name!r}; known: {sorted(CONFIGS)}")
  config = CONFIGS[name]()
  apply_model_overrides(config.model, shrink_overrides(args) + parse_overrides(args.model_overrides))
  config.execution.update(matmul=args.matmul, attention=args.attention)
  return config


# --------------------------------------------------------------------------------------------
# Measurement helpers (also used by compare_official.py).

def peak_rss_mib() -> float:
  """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def cpu_model() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def usable_cpus() -> int:
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def random_batch(seq_len: int, vocab_size: int, num_puzzle_identifiers: int, batch_size: int,
                 seed: int = SEED) -> dict:
  """numpy batch: tokens and labels in [1, vocab), puzzle ids in [0, N)."""
  import numpy as np
  rng = np.random.default_rng(seed)
  low = 1 if vocab_size > 1 else 0
  return {
      "inputs": rng.integers(low, vocab_size, (batch_size, seq_len)).astype(np.int32),
      "labels": rng.integers(low, vocab_size, (batch_size, seq_len)).astype(np.int32),
      "puzzle_identifiers": rng.integers(0, num_puzzle_identifiers, (batch_size,)).astype(np.int32),
  }


def jax_environment() -> dict:
  import jax
  device = jax.devices()[0]
  return {
      "jax": jax.__version__,
      "backend": jax.default_backend(),
      "device_kind": device.device_kind,
      "num_devices": jax.device_count(),
      "cpu_count": os.cpu_count(),
      "usable_cpus": usable_cpus(),
      "cpu_model": cpu_model(),
      "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }


def _xla_memory(compiled) -> dict:
  try:
    stats = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - not every backend implements it
    stats = None
  if stats is None:
    return {}
  get = lambda name: int(getattr(stats, name, 0) or 0)
  out = {name: get(name) for name in ("temp_size_in_bytes", "argument_size_in_bytes",
                                      "output_size_in_bytes", "alias_size_in_bytes",
                                      "generated_code_size_in_bytes", "peak_memory_in_bytes")}
  out["estimate_bytes"] = (out["temp_size_in_bytes"] + out["argument_size_in_bytes"]
                           + out["output_size_in_bytes"] - out["alias_size_in_bytes"])
  return out


def _device_peak_bytes() -> int | None:
  import jax
  device = jax.devices()[0]
  if device.platform == "cpu":
    return None
  try:
    stats = device.memory_stats() or {}
  except Exception:  # noqa: BLE001
    return None
  return stats.get("peak_bytes_in_use")


def time_jax(model_cfg, train_cfg, np_batch: dict, what: str, warmup: int, repeats: int,
             params=None, return_preds: bool = False, peak_override: float | None = None,
             profile_dir: str | None = None, profile_calls: int = 3) -> dict:
  """Compile and time one trm_jax train step or eval batch; `params` default: fresh init.
  `profile_dir`: then `profile_calls` more calls are traced by jax.profiler into it (after the
  timed ones, which the profiler would slow down)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from trm_jax import model as model_lib
  from trm_jax import flops, inference, train
  from trm_jax.config import ModelSpec

  spec = ModelSpec.from_config(model_cfg)
  batch = {k: jnp.asarray(v) for k, v in np_batch.items()}
  batch_size = int(batch["inputs"].shape[0])
  if what == "train":
    state = train.init_state(model_cfg, train_cfg, batch, TOTAL_STEPS, jax.random.key(SEED),
                             params=params)
    jax.block_until_ready(state)
    train_step = functools.partial(train.train_step, train_cfg=train_cfg, total_steps=TOTAL_STEPS)
    model_flops = flops.model_flops(spec, train_step, state, batch)
    step = jax.jit(functools.partial(train_step, spec=spec), donate_argnums=0)
    start = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - start

    def call():
      nonlocal state
      state, metrics = compiled(state, batch)
      return state, metrics
    steps_per_call = 1
  elif what == "eval":
    if params is None:
      params = model_lib.init_params(spec, jax.random.key(SEED))
    jax.block_until_ready(params)
    model_flops = flops.model_flops(spec, inference.eval_batch, params, batch)
    evaluate = jax.jit(functools.partial(inference.eval_batch, spec=spec))
    start = time.perf_counter()
    compiled = evaluate.lower(params, batch).compile()
    compile_s = time.perf_counter() - start
    call = lambda: compiled(params, batch)
    steps_per_call = spec.halt_max_steps
  else:
    raise ValueError(f"what must be train or eval, got {what!r}")

  times, out = [], None
  for i in range(warmup + repeats):
    start = time.perf_counter()
    out = call()
    jax.block_until_ready(out)
    if i >= warmup:
      times.append(time.perf_counter() - start)
  median = statistics.median(times)
  device_peak = _device_peak_bytes()
  if profile_dir:
    from trm_jax import profiling
    with profiling.StepTracer(range(1, profile_calls + 1), profile_dir, profile_calls,
                              name=what) as tracer:
      for i in range(1, profile_calls + 1):
        tracer.begin(i)
        tracer.end(i, call())
  result = {
      "what": what, "batch": batch_size, "compile_s": compile_s, "median_s": median,
      "times_s": times, "steps_per_call": steps_per_call,
      "calls_per_s": 1.0 / median, "sup_steps_per_s": steps_per_call / median,
      "examples_per_s": batch_size / median,
      **flop_rates(model_flops, median, flops.peak_tflops(jax.devices()[0].device_kind,
                                                    spec.compute_dtype, peak_override)),
      "peak_rss_mib": peak_rss_mib(),
      "peak_device_mib": None if device_peak is None else device_peak / 2**20,
      "xla_memory": _xla_memory(compiled),
      "num_params": model_lib.count_params(model_lib.abstract_params(spec)),
      "model": model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg),
  }
  if return_preds and what == "eval":
    result["preds"] = np.asarray(out["preds"]).tolist()
  return result


def flop_rates(model_flops: int, seconds: float, peak: float | None) -> dict:
  """Model TFLOP per call, achieved TFLOP/s and MFU (None without a known peak)."""
  achieved = model_flops / seconds / 1e12
  return {"model_tflop_per_call": model_flops / 1e12, "tflops_per_s": achieved,
          "peak_tflops": peak, "mfu": None if not peak else achieved / peak}


def run_child(argv: list[str], env: dict | None = None, label: str = "") -> dict:
  """Run `python <argv>` and return the JSON it reports (or an error record)."""
  proc = subprocess.run([sys.executable] + argv, capture_output=True, text=True, env=env)
  for line in reversed(proc.stdout.splitlines()):
    if line.startswith(RESULT_PREFIX):
      return json.loads(line[len(RESULT_PREFIX):])
  tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
  print(f"[{label}] subprocess failed (exit {proc.returncode}):\n{tail}", file=sys.stderr)
  return {"error": f"exit {proc.returncode}: {tail.splitlines()[-1] if tail else ''}"}


def emit(result: dict) -> None:
  print(RESULT_PREFIX + json.dumps(result), flush=True)


def fmt(value, spec: str = ".3f") -> str:
  if value is None:
    return "-"
  return format(value, spec)


def fmt_percent(fraction: float | None) -> str:
  return "-" if fraction is None else f"{100 * fraction:.1f}%"


# --------------------------------------------------------------------------------------------
# CLI.

def _csv(text: str) -> list[str]:
  return [t.strip() for t in text.split(",") if t.strip()]


def add_shared_arguments(p: argparse.ArgumentParser, *, scope: str) -> None:
  """The options bench_trm.py and compare_official.py share; `scope` says which processes or
  sides the overrides reach, for the help text."""
  p.add_argument("--what", default="train,eval", help="comma list of train, eval")
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--h_cycles", type=int, default=None, help=f"override H_cycles ({scope})")
  p.add_argument("--l_cycles", type=int, default=None, help=f"override L_cycles ({scope})")
  p.add_argument("--halt_max_steps", type=int, default=None,
                 help=f"override halt_max_steps ({scope})")
  p.add_argument("--matmul", default="auto", help="trm_jax's matmul kernels, execution.matmul "
                 "(trm_jax/kernels/matmul.py)")
  p.add_argument("--attention", default="auto", help="trm_jax's attention kernel, "
                 "execution.attention (trm_jax/kernels/attention.py)")
  p.add_argument("--host_malloc", default="auto", choices=host_memory.MODES,
                 help=f"host memory settings of {scope} (trm_jax/host_memory.py)")
  p.add_argument("--json_out", default=None, help="write all results as JSON here")
  p.add_argument("--peak_tflops", type=float, default=None,
                 help="matrix peak for MFU (default: the bf16 datasheet peak of a known GPU/TPU)")
  p.add_argument("--profile_dir", default=None,
                 help="trace --profile_calls more calls of each trm_jax measurement with "
                      "jax.profiler into DIR/<config>_<batch>_<what> (trm_jax/profiling.py)")
  p.add_argument("--profile_calls", type=int, default=3)


def profile_dir(args, config: str, batch_size, what: str) -> str | None:
  """Where a measurement's profile goes (None: not profiled)."""
  return args.profile_dir and f"{args.profile_dir}/{config}_{batch_size}_{what}"


def check_counts(args) -> None:
  if args.repeats < 1 or args.warmup < 0:
    raise SystemExit("--repeats must be >= 1 and --warmup >= 0")


def make_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 1)[1])
  p.add_argument("--configs", default="sudoku_mlp_t,sudoku_att,maze_att,arc_att",
                 help=f"comma list of {sorted(CONFIGS)}")
  p.add_argument("--batch_sizes", default="32", help="comma list of batch sizes")
  p.add_argument("--repeats", type=int, default=5)
  add_shared_arguments(p, scope="each measuring process")
  p.add_argument("--model_overrides", default="",
                 help="comma list key=value set on the model ConfigDict (typed like the field)")
  p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: config:batch:what
  return p


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  args = make_parser().parse_args(argv)
  check_counts(args)

  if args.one:  # Child: one measurement, reported as a JSON line.
    host_malloc = host_memory.configure(args.host_malloc)  # before JAX starts its backend
    name, batch_size, what = args.one.split(":")
    from trm_jax import experiment
    from trm_jax.kernels import execution
    config = build_config(name, args)
    model = config.model
    batch = random_batch(model.seq_len, model.vocab_size, model.num_puzzle_identifiers,
                         int(batch_size))
    with execution.using(experiment.execution_settings(config)):
      result = time_jax(model, config.train, batch, what, args.warmup, args.repeats,
                        peak_override=args.peak_tflops,
                        profile_dir=profile_dir(args, name, batch_size, what),
                        profile_calls=args.profile_calls)
    result.update(config=name, env=dict(jax_environment(), host_malloc=host_malloc))
    emit(result)
    return 0

  child_env = dict(os.environ)
  os.environ["JAX_PLATFORMS"] = "cpu"  # This parent never touches an accelerator; children do.
  configs, whats = _csv(args.configs), _csv(args.what)
  batch_sizes = [int(b) for b in _csv(args.batch_sizes)]
  from trm_jax import experiment
  from trm_jax.config import ModelSpec
  for name in configs:
    if name not in CONFIGS:
      raise SystemExit(f"unknown config {name!r}; known: {sorted(CONFIGS)}")
    # Fail on bad overrides before any subprocess starts (at most the CPU backend starts here:
    # asking whether a CPU kernel is available).
    try:
      config = build_config(name, args)
      ModelSpec.from_config(config.model)
      experiment.execution_settings(config)
    except (ValueError, TypeError) as e:
      raise SystemExit(f"config {name}: {e}") from None
  for what in whats:
    if what not in ("train", "eval"):
      raise SystemExit(f"--what: unknown {what!r} (train, eval)")

  results, env = [], None
  for name in configs:
    for batch_size in batch_sizes:
      for what in whats:
        label = f"{name} B={batch_size} {what}"
        print(f"running {label} ...", file=sys.stderr, flush=True)
        child_argv = [str(pathlib.Path(__file__).resolve())] + argv + [
            "--one", f"{name}:{batch_size}:{what}"]
        result = run_child(child_argv, env=child_env, label=label)
        result.update(config=name, batch=batch_size, what=what)
        env = env or result.get("env")
        results.append(result)

  env = env or {}
  print(f"jax {env.get('jax', '?')} | backend {env.get('backend', '?')} | device "
        f"{env.get('device_kind', '?')} x{env.get('num_devices', '?')} | CPUs "
        f"{env.get('cpu_count', '?')} ({env.get('usable_cpus', '?')} usable, "
        f"{env.get('cpu_model', '?')}) | XLA_FLAGS={env.get('xla_flags', '')!r} | "
        f"{env.get('host_malloc', '?')}")
  shrink = shrink_overrides(args) + parse_overrides(args.model_overrides)
  print(f"repeats {args.repeats}, warmup {args.warmup}; model overrides: "
        f"{', '.join(f'{k}={v}' for k, v in shrink) or 'none'}; execution: matmul="
        f"{args.matmul}, attention={args.attention}")
  print("train = 1 supervision step + optimiser update per call; eval = 1 full eval batch "
        "(halt_max_steps supervision steps) per call.")
  print()
  print("TFLOP/s = matmul FLOPs of the traced step (trm_jax/flops.py) / median time; MFU = "
        "TFLOP/s / the device's bf16 matrix peak (--peak_tflops).")
  print()
  print("| config | batch | what | compile s | median s/call | sup-steps/s | examples/s | "
        "TFLOP/s | MFU | peak RSS MiB | peak device MiB | XLA estimate MiB |")
  print("|---|---|---|---|---|---|---|---|---|---|---|---|")
  for r in results:
    if "error" in r:
      print(f"| {r['config']} | {r['batch']} | {r['what']} | error: {r['error']} |"
            + " |" * 8)
      continue
    xla = r.get("xla_memory", {}).get("estimate_bytes")
    print(f"| {r['config']} | {r['batch']} | {r['what']} | {fmt(r['compile_s'], '.1f')} | "
          f"{fmt(r['median_s'], '.4f')} | {fmt(r['sup_steps_per_s'], '.2f')} | "
          f"{fmt(r['examples_per_s'], '.1f')} | {fmt(r['tflops_per_s'], '.2f')} | "
          f"{fmt_percent(r['mfu'])} | {fmt(r['peak_rss_mib'], '.0f')} | "
          f"{fmt(r['peak_device_mib'], '.0f')} | {fmt(None if xla is None else xla / 2**20, '.0f')} |")
  if args.json_out:
    payload = {"env": env, "args": vars(args), "results": results}
    pathlib.Path(args.json_out).write_text(json.dumps(payload, indent=1))
    print(f"\nwrote {args.json_out}")
  return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
  sys.exit(main())
