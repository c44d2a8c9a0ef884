r"""Time the official PyTorch TRM and trm_jax side by side: same config, weights and batches.

    python benchmarks/compare_official.py --official /path/to/TinyRecursiveModels

PATH is a work tree of the official repository (SamsungSAILMontreal/TinyRecursiveModels); its
`models/` package is imported from there at run time (needs torch, einops, pydantic). Nothing
is downloaded and nothing of it is copied here. DIS configs (`--config nqueens_dis`,
`arc_dis_compact`, `arc_dis_medium`) need a work tree of the official DIS code
(machinestein/Deep-Improvement-Supervision) instead: its `TinyRecursiveReasoningModel_ACTV5`
with `ACTLossHeadV4` runs against trm_jax's `dis` scheme, the same loop (one supervision step
and one update per call in training; N_sup steps per eval batch).

What is timed (median over --repeats calls after --warmup calls, each in a fresh subprocess per
side, batch size and what, so that peak RSS is that measurement's own):

  train step - official: `ACTLossHead(model, "stablemax_cross_entropy")` in training mode,
      `carry, loss, ... = head(return_keys=[], carry=carry, batch=batch)`,
      `(loss / batch).backward()`, then the optimisers' `step()` / `zero_grad()` and the EMA
      update, with the carry persisting across steps as in the official `pretrain.py`.
      Optimisers: the official sparse puzzle-embedding sign-SGD
      (`CastedSparseEmbeddingSignSGD_Distributed` with world_size=1, which calls no
      torch.distributed collective) and `torch.optim.AdamW` over the dense parameters IN PLACE OF
      the official AdamATan2 (the `adam_atan2` package is a CUDA extension that is not available
      on CPU); `models.ema.EMAHelper` when the recipe uses EMA (all official recipes do).
      trm_jax: `train.train_step` under jax.jit with the state donated: the same supervision
      step, AdamATan2 (atan2 instead of AdamW's divide: a few more element-wise ops), the
      sparse sign-SGD and the EMA, all in one compiled program.
  eval batch - official: eval mode under `torch.inference_mode()`, a fresh
      `head.initial_carry(batch)`, then head calls until `all_finish` (= halt_max_steps calls in
      eval mode), as the official `evaluate` loop does. trm_jax: one jitted `inference.eval_batch`
      (all halt_max_steps supervision steps in a `lax.scan`).

Weights: the official model is built under `torch.manual_seed(--seed)` (official init), its
state_dict is converted with `trm_jax.convert.from_official_state_dict`, so both sides run the
same weights on the same random batch (tokens and labels in [1, vocab), puzzle ids in [0, 16)).
As a sanity check the final eval predictions of both sides are compared (agreement %).

"compile s" is `jit(...).lower(...).compile()` for trm_jax, and the first call (lazy
initialisation; plus torch.compile's compilation with --torch_compile) for torch.

Full measurements:

  # CPU, official Sudoku mlp_t recipe (hidden 512, H_cycles 3, L_cycles 6, 16 sup. steps), bf16:
  python benchmarks/compare_official.py --official /tmp/official --config sudoku_mlp_t \
      --batch_sizes 32 --repeats 5 --warmup 1 --dtype bfloat16
  # the attention recipes:
  python benchmarks/compare_official.py --official /tmp/official --config sudoku_att --batch_sizes 32
  python benchmarks/compare_official.py --official /tmp/official --config maze_att --batch_sizes 8
  # GPU (torch on CUDA; the official trainer uses torch.compile):
  python benchmarks/compare_official.py --official /tmp/official --config sudoku_mlp_t \
      --batch_sizes 256,768 --repeats 10 --warmup 3 --torch_compile

Quick end-to-end check (both sides shrunk identically: H_cycles 1, L_cycles 1, 2 sup. steps,
batch 2, 2 repeats):

  python benchmarks/compare_official.py --official /tmp/official --quick
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench_trm  # noqa: E402  (imports no jax or torch at module level)
from bench_trm import SEED  # noqa: E402
from trm_jax import host_memory  # noqa: E402  (imports no jax)

OFFICIAL_FILES = ("models/recursive_reasoning/trm.py", "models/losses.py",
                  "models/sparse_embedding.py", "models/ema.py", "models/layers.py")
# Beyond what `convert.official_arch` checks: the official model has no remat, and the
# comparison runs the official loss head with stablemax.
_FIXED = dict(remat="none", loss_type="stablemax")


def check_official(path: str) -> pathlib.Path:
  root = pathlib.Path(path).expanduser().resolve()
  missing = [f for f in OFFICIAL_FILES if not (root / f).is_file()]
  if missing:
    raise SystemExit(f"--official {path}: not a work tree of the official TinyRecursiveModels "
                     f"repository (missing {', '.join(missing)}). Check it out yourself, e.g. "
                     "git clone https://github.com/SamsungSAILMontreal/TinyRecursiveModels; this "
                     "script never downloads anything.")
  return root


# Official model class (the arch name after '@') -> its loss head: TRM's, or the DIS code's.
LOSS_HEADS = {"TinyRecursiveReasoningModel_ACTV1": "ACTLossHead",
              "TinyRecursiveReasoningModel_ACTV5": "ACTLossHeadV4"}


def import_official(root: pathlib.Path, arch: dict):
  """(model class, loss head class, sparse sign-SGD, EMAHelper) of the official code at `root`:
  TRM's ACTV1 from SamsungSAILMontreal/TinyRecursiveModels, or for a DIS config ACTV5 with
  ACTLossHeadV4 from machinestein/Deep-Improvement-Supervision."""
  model_class = arch["name"].rsplit("@", 1)[-1]
  sys.path.insert(0, str(root))
  try:
    from models import losses
    from models.ema import EMAHelper
    from models.recursive_reasoning import trm
    from models.sparse_embedding import CastedSparseEmbeddingSignSGD_Distributed
  except ImportError as e:
    raise SystemExit(f"importing the official model from {root} failed ({e}); it needs torch, "
                     "einops and pydantic") from None
  if not hasattr(trm, model_class) or not hasattr(losses, LOSS_HEADS[model_class]):
    raise SystemExit(f"--official {root} has no {model_class} / {LOSS_HEADS[model_class]}: a "
                     "DIS config needs a work tree of machinestein/Deep-Improvement-Supervision")
  return (getattr(trm, model_class), getattr(losses, LOSS_HEADS[model_class]),
          CastedSparseEmbeddingSignSGD_Distributed, EMAHelper)


def build_configs(args):
  """(trm_jax experiment config, official arch dict without batch_size)."""
  config = bench_trm.build_config(args.config, args)
  model = config.model
  if any(key == "compute_dtype" for key, _ in bench_trm.parse_overrides(args.model_overrides)):
    raise SystemExit("--model_overrides compute_dtype: set it with --dtype (both sides)")
  model.compute_dtype = args.dtype
  for key, want in _FIXED.items():
    if key in model and model[key] != want:
      raise SystemExit(f"model field {key}={model[key]!r}: the official side only has {want!r}")
  from trm_jax import convert
  try:
    arch = convert.official_arch(model)
  except ValueError as e:
    raise SystemExit(f"--config {args.config}: {e}") from None
  if args.no_ema:
    config.train.ema = False
  return config, arch


def _sync(device: str):
  import torch
  if device.startswith("cuda"):
    torch.cuda.synchronize()


def torch_child(args, root: pathlib.Path, workdir: pathlib.Path, batch_size: int, what: str) -> dict:
  import numpy as np
  import torch
  torch.set_num_threads(args.threads)
  setup = json.loads((workdir / "setup.json").read_text())  # Written by the parent: no jax here.
  Model, LossHead, SparseSignSGD, EMAHelper = import_official(root, setup["arch"])
  train_cfg = argparse.Namespace(**setup["train"])
  device = args.torch_device
  arch = dict(setup["arch"], batch_size=batch_size)
  torch.manual_seed(args.seed)
  with torch.device(device):
    model = Model(arch)
  own = model.state_dict()
  weights = np.load(workdir / "weights.npz")
  model.load_state_dict({k: torch.from_numpy(weights[k]).to(own[k].dtype) for k in weights.files},
                        strict=True)
  head = LossHead(model, loss_type="stablemax_cross_entropy")
  np_batch = bench_trm.random_batch(arch["seq_len"], arch["vocab_size"],
                                    arch["num_puzzle_identifiers"], batch_size)
  batch = {k: torch.from_numpy(v).to(device) for k, v in np_batch.items()}
  runner = torch.compile(head) if args.torch_compile else head

  if what == "train":
    head.train()
    optimizers = []
    if arch["puzzle_emb_ndim"] > 0:
      optimizers.append(SparseSignSGD(model.puzzle_emb.buffers(), lr=train_cfg.puzzle_emb_lr,
                                      weight_decay=train_cfg.puzzle_emb_weight_decay,
                                      world_size=1))
    optimizers.append(torch.optim.AdamW(model.parameters(), lr=train_cfg.lr,
                                        betas=(train_cfg.beta1, train_cfg.beta2),
                                        weight_decay=train_cfg.weight_decay))
    ema = None
    if train_cfg.ema:
      ema = EMAHelper(mu=train_cfg.ema_rate)
      ema.register(runner)
    with torch.device(device):
      carry = runner.initial_carry(batch)

    def call():
      nonlocal carry
      carry, loss, _, _, _ = runner(return_keys=[], carry=carry, batch=batch)
      ((1 / batch_size) * loss).backward()
      for opt in optimizers:
        opt.step()
        opt.zero_grad()
      if ema is not None:
        ema.update(runner)
      return None
    steps_per_call = 1
  else:
    head.eval()
    calls = []

    def call():
      with torch.inference_mode():
        with torch.device(device):
          carry = runner.initial_carry(batch)
        n = 0
        while True:
          carry, _, _, outputs, all_finish = runner(
              return_keys=["preds", "q_halt_logits"], carry=carry, batch=batch)
          n += 1
          if all_finish:
            break
      calls.append(n)
      return outputs["preds"]
    steps_per_call = arch["halt_max_steps"]

  if device.startswith("cuda"):
    torch.cuda.reset_peak_memory_stats()
  _sync(device)
  start = time.perf_counter()
  out = call()
  _sync(device)
  first_s = time.perf_counter() - start
  times = []
  for i in range(args.warmup + args.repeats):
    start = time.perf_counter()
    out = call()
    _sync(device)
    if i >= args.warmup:
      times.append(time.perf_counter() - start)
  median = statistics.median(times)
  if what == "eval":
    if set(calls) != {steps_per_call}:
      raise SystemExit(f"official eval ran {sorted(set(calls))} steps, expected {steps_per_call}")
    np.save(workdir / f"preds_torch_{batch_size}.npy", out.cpu().numpy().astype(np.int32))
  return {
      "side": "official torch", "what": what, "batch": batch_size, "compile_s": first_s,
      "median_s": median, "times_s": times, "steps_per_call": steps_per_call,
      "examples_per_s": batch_size / median, "peak_rss_mib": bench_trm.peak_rss_mib(),
      "peak_device_mib": (torch.cuda.max_memory_allocated() / 2**20
                          if device.startswith("cuda") else None),
      "num_params": sum(p.numel() for p in model.parameters()),
      "env": {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
              "torch_device": device, "torch_compile": bool(args.torch_compile)},
  }


def jax_child(args, workdir: pathlib.Path, batch_size: int, what: str) -> dict:
  import numpy as np
  from trm_jax import convert, experiment
  from trm_jax.kernels import execution
  config, arch = build_configs(args)
  weights = np.load(workdir / "weights.npz")
  params = convert.from_official_state_dict({k: weights[k] for k in weights.files}, config.model)
  np_batch = bench_trm.random_batch(arch["seq_len"], arch["vocab_size"],
                                    arch["num_puzzle_identifiers"], batch_size)
  with execution.using(experiment.execution_settings(config)):
    result = bench_trm.time_jax(config.model, config.train, np_batch, what, args.warmup,
                                args.repeats, params=params, return_preds=True,
                                peak_override=args.peak_tflops,
                                profile_dir=bench_trm.profile_dir(args, args.config, batch_size,
                                                                  what),
                                profile_calls=args.profile_calls)
  preds = result.pop("preds", None)
  if preds is not None:
    np.save(workdir / f"preds_jax_{batch_size}.npy", np.asarray(preds, np.int32))
  result.update(side="trm_jax", env=bench_trm.jax_environment())
  return result


TRAIN_FIELDS = ("lr", "beta1", "beta2", "weight_decay", "puzzle_emb_lr", "puzzle_emb_weight_decay",
                "ema", "ema_rate")


def save_setup(args, root: pathlib.Path, workdir: pathlib.Path, config, arch) -> None:
  """Build the official model (official init, fixed seed); store its state_dict (fp32), the
  official arch and the optimiser settings for the children."""
  import numpy as np
  import torch
  Model, *_ = import_official(root, arch)
  (workdir / "setup.json").write_text(json.dumps(
      {"arch": arch, "train": {k: config.train[k] for k in TRAIN_FIELDS}}))
  torch.manual_seed(args.seed)
  model = Model(dict(arch, batch_size=1))
  state = {k: v.detach().cpu().float().numpy() if v.is_floating_point() else v.cpu().numpy()
           for k, v in model.state_dict().items()}
  np.savez(workdir / "weights.npz", **state)


def make_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 1)[1])
  p.add_argument("--official", required=True, help="work tree of the official TRM repository")
  p.add_argument("--config", default="sudoku_mlp_t", choices=sorted(bench_trm.CONFIGS))
  p.add_argument("--batch_sizes", default=None, help="comma list (default 32; --quick: 2)")
  p.add_argument("--repeats", type=int, default=None, help="default 5 (--quick: 2)")
  bench_trm.add_shared_arguments(p, scope="both sides")
  p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float32"),
                 help="official forward_dtype = trm_jax compute_dtype")
  p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
  p.add_argument("--torch_compile", action="store_true",
                 help="wrap the official loss head in torch.compile (as pretrain.py does)")
  p.add_argument("--torch_device", default=None, help="default: cuda if available, else cpu")
  p.add_argument("--seed", type=int, default=SEED, help="torch.manual_seed of the official init")
  p.add_argument("--no_ema", action="store_true", help="no EMA on either side")
  p.add_argument("--model_overrides", default="",
                 help="key=value,... on the model config of BOTH sides (trm_jax field names)")
  p.add_argument("--quick", action="store_true",
                 help="H_cycles 1, L_cycles 1, halt_max_steps 2, batch 2, 2 repeats (both sides)")
  # Internal (child processes).
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # torch|jax:batch:what
  p.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
  return p


def resolve_defaults(args):
  if args.quick:
    args.h_cycles = 1 if args.h_cycles is None else args.h_cycles
    args.l_cycles = 1 if args.l_cycles is None else args.l_cycles
    args.halt_max_steps = 2 if args.halt_max_steps is None else args.halt_max_steps
  args.batch_sizes = args.batch_sizes or ("2" if args.quick else "32")
  if args.repeats is None:
    args.repeats = 2 if args.quick else 5
  bench_trm.check_counts(args)
  if args.torch_device is None:
    args.torch_device = "cpu"
    try:
      import torch
      if torch.cuda.is_available():
        args.torch_device = "cuda"
    except ImportError:
      raise SystemExit("compare_official.py needs torch (pip install torch)") from None
  return args


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  args = resolve_defaults(make_parser().parse_args(argv))
  root = check_official(args.official)

  if args.child:
    side, batch_size, what = args.child.split(":")
    mode = args.host_malloc
    if side == "torch" and mode == "auto":  # auto asks about JAX's backend; torch has its own
      mode = "retain" if args.torch_device == "cpu" else "system"
    # Before JAX starts its backend; the torch side only takes glibc's settings.
    host_malloc = host_memory.configure(mode, jax_dispatch=side == "jax")
    workdir = pathlib.Path(args.workdir)
    if side == "torch":
      result = torch_child(args, root, workdir, int(batch_size), what)
    else:
      result = jax_child(args, workdir, int(batch_size), what)
    result["env"]["host_malloc"] = host_malloc
    bench_trm.emit(result)
    return 0

  whats = bench_trm._csv(args.what)
  if any(w not in ("train", "eval") for w in whats):
    raise SystemExit("--what: train and/or eval")
  batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
  child_env = dict(os.environ)
  os.environ["JAX_PLATFORMS"] = "cpu"  # This parent never touches an accelerator; children do.
  config, arch = build_configs(args)
  from trm_jax.config import ModelSpec
  ModelSpec.from_config(config.model)  # Fail early on a bad override.

  results = []
  with tempfile.TemporaryDirectory(prefix="trm_compare_") as tmp:
    workdir = pathlib.Path(tmp)
    save_setup(args, root, workdir, config, arch)
    for batch_size in batch_sizes:
      for what in whats:
        for side in ("torch", "jax"):
          label = f"{side} B={batch_size} {what}"
          print(f"running {label} ...", file=sys.stderr, flush=True)
          child_argv = [str(pathlib.Path(__file__).resolve())] + argv + [
              "--child", f"{side}:{batch_size}:{what}", "--workdir", str(workdir),
              "--torch_device", args.torch_device]
          result = bench_trm.run_child(child_argv, env=child_env, label=label)
          result.update(side="official torch" if side == "torch" else "trm_jax",
                        batch=batch_size, what=what)
          results.append(result)
        if what == "eval":
          import numpy as np
          paths = [workdir / f"preds_{s}_{batch_size}.npy" for s in ("torch", "jax")]
          if all(p.exists() for p in paths):
            a, b = (np.load(p) for p in paths)
            results[-1]["preds_agreement"] = float((a == b).mean()) if a.shape == b.shape else 0.0

  torch_env = next((r["env"] for r in results if r.get("side") == "official torch" and "env" in r), {})
  jax_env = next((r["env"] for r in results if r.get("side") == "trm_jax" and "env" in r), {})
  print(f"official: {root} | torch {torch_env.get('torch', '?')} on {torch_env.get('torch_device', '?')}"
        f", {torch_env.get('torch_threads', '?')} threads, torch.compile "
        f"{'on' if args.torch_compile else 'off'} | {torch_env.get('host_malloc', '?')}")
  print(f"trm_jax: jax {jax_env.get('jax', '?')}, backend {jax_env.get('backend', '?')}, device "
        f"{jax_env.get('device_kind', '?')} | CPUs {jax_env.get('cpu_count', '?')} "
        f"({jax_env.get('usable_cpus', '?')} usable, {jax_env.get('cpu_model', '?')}) | "
        f"XLA_FLAGS={jax_env.get('xla_flags', '')!r} | {jax_env.get('host_malloc', '?')}")
  shown = {k: arch[k] for k in ("seq_len", "vocab_size", "hidden_size", "expansion", "L_layers",
                                "H_cycles", "L_cycles", "halt_max_steps", "mlp_t",
                                "pos_encodings", "puzzle_emb_ndim", "puzzle_emb_len",
                                "forward_dtype")}
  print(f"config {args.config}: {json.dumps(shown)}; EMA {'on' if config.train.ema else 'off'}; "
        f"repeats {args.repeats}, warmup {args.warmup}"
        + f"; trm_jax execution: matmul={args.matmul}, attention={args.attention}")
  print("notes: official optimiser = torch AdamW (the official AdamATan2 is a CUDA-only package) "
        "+ the official sparse sign-SGD (world_size=1, no torch.distributed) + EMAHelper; "
        "trm_jax = AdamATan2 + sparse sign-SGD + EMA in one jitted step (slightly more "
        "element-wise work). compile s: jit lower+compile (trm_jax), first call (torch). "
        "train = 1 supervision step + update; eval = 1 full batch of halt_max_steps steps.")
  print()
  print("TFLOP/s: trm_jax's traced matmul FLOPs per call (trm_jax/flops.py; the official model "
        "does the same matmuls) / median s; MFU: / the device's bf16 matrix peak.")
  print()
  print("| side | what | batch | compile / first call s | median s | examples/s | TFLOP/s | "
        "MFU | peak RSS MiB | peak device MiB | trm_jax speed / official |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  by_key = {(r["side"], r["what"], r["batch"]): r for r in results}
  for r in results:
    if "error" in r:
      print(f"| {r['side']} | {r['what']} | {r['batch']} | error: {r['error']} |" + " |" * 7)
      continue
    ratio = ""
    mine = by_key.get(("trm_jax", r["what"], r["batch"]), {})
    if r["side"] == "official torch" and "model_tflop_per_call" in mine:
      r.update(bench_trm.flop_rates(mine["model_tflop_per_call"] * 1e12, r["median_s"],
                                    mine["peak_tflops"]))
    if r["side"] == "trm_jax":
      other = by_key.get(("official torch", r["what"], r["batch"]))
      if other and "error" not in other:
        ratio = f"{other['median_s'] / r['median_s']:.2f}x"
        r["speed_ratio_vs_official"] = other["median_s"] / r["median_s"]
    print(f"| {r['side']} | {r['what']} | {r['batch']} | {bench_trm.fmt(r['compile_s'], '.1f')} | "
          f"{bench_trm.fmt(r['median_s'], '.4f')} | {bench_trm.fmt(r['examples_per_s'], '.1f')} | "
          f"{bench_trm.fmt(r.get('tflops_per_s'), '.2f')} | {bench_trm.fmt_percent(r.get('mfu'))} | "
          f"{bench_trm.fmt(r['peak_rss_mib'], '.0f')} | {bench_trm.fmt(r['peak_device_mib'], '.0f')} | "
          f"{ratio} |")
  agreements = [(r["batch"], r["preds_agreement"]) for r in results if "preds_agreement" in r]
  for batch_size, agree in agreements:
    print(f"\nsanity: final eval predictions agree on {100 * agree:.2f}% of tokens (batch "
          f"{batch_size}; same weights and batch; {args.dtype} rounding can flip near-ties)")
  if args.json_out:
    payload = {"args": vars(args), "arch": arch, "results": results}
    pathlib.Path(args.json_out).write_text(json.dumps(payload, indent=1))
    print(f"\nwrote {args.json_out}")
  return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
  sys.exit(main())
