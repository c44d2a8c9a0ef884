r"""DIS against TRM at equal network size on CPU-scale tasks: accuracy per forward pass.

    python benchmarks/dis_vs_trm.py --root /tmp/dis_vs_trm [--tasks sudoku6,nqueens8]
        [--methods trm,dis,dis_halt] [--epochs N] [--lr_min_ratio R] [--dis_n_sup N]
        [--max_examples 500]

Methods (same network, optimiser, data and epochs; only the recursion and supervision differ):
  trm       TRM with the official recursion: T=3, n=6, N_sup=16, ACT Q head with exploration
  dis       DIS as the official code runs it: T=1, n=2, N_sup=6, step targets, no halting head
  dis_halt  DIS plus a learned halting head (scheme_options.halting='learned', BCE on exact
            correctness, no Q-learning), evaluated with and without halting on it
  dis_cfg   DIS trained with conditioning dropout 0.1 (scheme_options.cfg_dropout), evaluated
            with classifier-free guidance at w in CFG_WS as well (two passes per step)
Tasks:
  sudoku6   the CPU smoke task: generated 6x6 Sudoku with unique solutions (2,000 train puzzles x
            20 augmentations, 500 held-out), the smoke network (hidden 64, 2 mlp_t blocks)
  nqueens8  N-Queens 8x8, the official DIS sets (7,200 train / 200 test) on the same network;
            scored by exact match (the official metric) and by valid completions that keep the
            given queens

Each (task, method) trains in its own process through `python -m trm_jax.main`'s `run` (own
workdir under --root; a finished run there is reused when it was trained with the same
--epochs / --lr_min_ratio / --dis_n_sup, and refused otherwise), then every inference strategy of
`trm_jax.analyze` runs on its held-out set. Prints one table per task (method, training wall
time and measured training passes per example, inference passes per example, accuracy), then
the accuracy/compute frontier of every strategy, and writes results.json and frontier_<task>.png
under --root.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ("trm", "dis", "dis_halt", "dis_cfg")
CFG_DROPOUT = 0.1  # the official DIS config's (unused) cf_uncond_prob
CFG_WS = (1.0, 1.5, 2.0, 3.0)
ROLLOUTS = ((4, 0.3),)  # test-time scaling: (K, noise scale); K x the passes of each pick
TASKS = ("sudoku6", "nqueens8")


def make_config(task: str, method: str, epochs: int | None, lr_min_ratio: float | None = None,
                dis_n_sup: int = 6):
  from experiments import common
  from experiments import sudoku
  config = sudoku.get_config("smoke")  # network, optimiser and (for sudoku6) data
  if task == "nqueens8":
    from experiments import nqueens
    official = nqueens.get_config("")
    config.data = official.data
    config.model.seq_len, config.model.vocab_size = 64, 3
    config.eval.global_batch_size = 200
    config.train.epochs, config.train.eval_interval = 20, 10
  if epochs:
    config.train.epochs = epochs
    config.train.eval_interval = epochs
  if lr_min_ratio is not None:  # cosine decay from lr to lr * ratio after the warm-up
    config.train.lr_min_ratio = lr_min_ratio
  model = config.model
  if method == "trm":
    model.H_cycles, model.L_cycles, model.halt_max_steps = 3, 6, 16
  else:
    common.dis(model, n_sup=dis_n_sup)
    if method == "dis_halt":
      model.scheme_options.halting = "learned"
    if method == "dis_cfg":
      model.scheme_options.cfg_dropout = CFG_DROPOUT
  return config


def train(task: str, method: str, workdir: pathlib.Path, settings: list[str]) -> dict:
  """Trains in a child process (timed); returns {seconds, train_passes_per_example}. A finished
  run in `workdir` is reused only if it was trained with the same `settings`."""
  done = workdir / "eval_table.txt"
  timing = workdir / "benchmark_timing.json"
  if done.exists() and timing.exists():
    trained = json.loads(timing.read_text()).get("settings")
    if trained != settings:
      raise SystemExit(
          f"{workdir}: this finished run was trained with "
          f"{' '.join(trained) if trained is not None else 'settings that were not recorded'}, "
          f"not {' '.join(settings)}; use another --root (or remove {workdir}) to train anew")
  else:
    start = time.time()
    subprocess.run([sys.executable, __file__, "--child", f"{task}:{method}", "--root",
                    str(workdir), *settings], check=True, cwd=ROOT)
    timing.write_text(json.dumps({"seconds": time.time() - start, "settings": settings}))
  seconds = json.loads(timing.read_text())["seconds"]
  # Measured training passes: the examples that finished in the last logged steps.
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_lines = [l for l in lines if l["kind"] == "train" and "forward_passes_per_example" in l]
  tail = train_lines[-5:]
  passes = sum(l["forward_passes_per_example"] * l["count"] for l in tail) / max(
      sum(l["count"] for l in tail), 1)
  return {"train_seconds": seconds, "train_passes_per_example": passes}


def analyze(task: str, method: str, workdir: pathlib.Path, max_examples: int) -> dict:
  import trm_jax
  from trm_jax import analyze as analyze_lib
  from trm_jax.config import ModelSpec
  from trm_jax.data import datasets
  run = trm_jax.load(workdir)
  source = datasets.builder_for(run.config.data).as_data_source()["test"]
  scorers = analyze_lib.task_scorers(run.config, ModelSpec.from_config(run.model_config))
  return analyze_lib.analyze(run, source, max_examples=max_examples,
                             batch_size=run.config.eval.global_batch_size,
                             ws=[0.5, 1.0, 1.5, 2.0, 3.0], ks=[1, 2], scorers=scorers,
                             cfg_ws=CFG_WS if method == "dis_cfg" else (),
                             rollouts=ROLLOUTS)


def plot(task: str, results: dict, path: pathlib.Path, metric: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(8, 5))
  placed = []  # (log10 x, y) of the labels so far, of every method
  for i, (method, r) in enumerate(results.items()):
    color = plt.cm.tab10(i)
    rows = r["analysis"]["strategies"]
    budget = [s for s in rows if s["budget_only"]]
    ax.plot([s["forward_passes_per_example"] for s in budget], [s[metric] for s in budget],
            "o-", color=color, ms=3, lw=1, label=f"{method}: fixed budgets")
    labels = {}  # one annotation per point: strategies that land on the same point share it
    for s in rows:
      if s["budget_only"]:
        continue
      marker = "*" if s["rollouts"] > 1 else {"fixed": "D", "q": "s", "converged": "^"}[s["halt"]]
      ax.scatter(s["forward_passes_per_example"], s[metric], marker=marker, color=color, s=30,
                 zorder=3)
      short = ("CFG " * (s["guidance"] == "cfg")) + (
          f"w={s['guidance_w']:g}" if s["halt"] == "fixed" else
          "Q" if s["halt"] == "q" else f"conv k={s['converge_k']}")
      if s["rollouts"] > 1:
        short = f"K={s['rollouts']} {s['strategy'].rsplit('pick ', 1)[-1].rstrip(')')}"
      # keyed at 0.01 of accuracy: closer points overlap on the plot anyway
      labels.setdefault((s["forward_passes_per_example"], round(s[metric], 2)), []).append(short)
    for (x, y), names in labels.items():
      # a label near earlier ones (any method's: at 0.03 of accuracy and a third of a decade
      # of passes) goes one line below them rather than on top of them
      near = sum(abs(y - py) < 0.03 and abs(math.log10(x) - px) < 0.35 for px, py in placed)
      placed.append((math.log10(x), y))
      ax.annotate(", ".join(names), (x, y), fontsize=6, xytext=(3, 2 - 8 * near),
                  textcoords="offset points", color=color)
  ax.set_xscale("log")
  ax.set_xlabel("inference forward passes per example (log)")
  ax.set_ylabel(metric.replace("_", " "))
  ax.set_title(f"{task}: accuracy against inference compute "
               "(lines: plain inference at 1..N_sup steps; D guidance, s Q halting, ^ convergence, "
               "* K rollouts)",
               fontsize=8)
  ax.legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def report(task: str, results: dict) -> str:
  scorers = next(iter(results.values()))["analysis"]["scorers"]
  extra = "".join(f" {s.replace('_', ' ')} |" for s in scorers)
  lines = [f"### {task}", "",
           f"| method | train wall s | train passes / example | inference passes / example | "
           f"exact accuracy |{extra}", "|---" * (5 + len(scorers)) + "|"]
  for method, r in results.items():
    full = next(s for s in r["analysis"]["strategies"]
                if s["budget_only"] and s["max_steps"] == r["analysis"]["points"][-1][
                    "supervision_step"])
    more = "".join(f" {full[s]:.4f} |" for s in scorers)
    lines.append(f"| {method} | {r['train_seconds']:.0f} | {r['train_passes_per_example']:.1f} | "
                 f"{full['forward_passes_per_example']:.0f} | {full['exact_accuracy']:.4f} |"
                 f"{more}")
  lines += ["", f"| method | inference strategy | passes / example | exact accuracy |{extra}",
            "|---" * (4 + len(scorers)) + "|"]
  for method, r in results.items():
    for s in r["analysis"]["strategies"]:
      more = "".join(f" {s[k]:.4f} |" for k in scorers)
      lines.append(f"| {method} | {s['strategy']} | {s['forward_passes_per_example']:.1f} | "
                   f"{s['exact_accuracy']:.4f} |{more}")
  for method, r in results.items():
    a = r["analysis"]
    lines.append(f"\n{method}: dead compute {a['dead_passes_per_example']:.1f} of "
                 f"{a['forward_passes_per_example']:g} passes per example "
                 f"({100 * a['dead_fraction']:.1f}%)")
  return "\n".join(lines)


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 1)[1])
  p.add_argument("--root", required=True, help="directory for the runs and the results")
  p.add_argument("--tasks", default=",".join(TASKS))
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument("--epochs", type=int, default=0, help="training epochs (0: the task default)")
  p.add_argument("--lr_min_ratio", type=float, default=None,
                 help="every method: cosine decay to lr x this (default: the task's, constant)")
  p.add_argument("--dis_n_sup", type=int, default=6,
                 help="supervision steps of the DIS methods (official: 6 for ARC)")
  p.add_argument("--max_examples", type=int, default=500)
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  root = pathlib.Path(args.root).absolute()

  if args.child:  # train one run in this process
    task, method = args.child.split(":")
    from trm_jax import main as main_lib
    main_lib.run(make_config(task, method, args.epochs or None, args.lr_min_ratio,
                             args.dis_n_sup), str(root))
    return 0

  tasks = [t for t in args.tasks.split(",") if t]
  methods = [m for m in args.methods.split(",") if m]
  for name, allowed, given in (("--tasks", TASKS, tasks), ("--methods", METHODS, methods)):
    if not given or any(x not in allowed for x in given):
      raise SystemExit(f"{name}: choose from {allowed}")
  if args.dis_n_sup < 1 or not (args.lr_min_ratio is None or 0 <= args.lr_min_ratio <= 1):
    raise SystemExit("--dis_n_sup must be >= 1 and --lr_min_ratio in [0, 1]")
  settings = ["--epochs", str(args.epochs), "--dis_n_sup", str(args.dis_n_sup)] + (
      [] if args.lr_min_ratio is None else ["--lr_min_ratio", str(args.lr_min_ratio)])
  root.mkdir(parents=True, exist_ok=True)
  everything = {"settings": " ".join(settings)}
  for task in tasks:
    results = {}
    for method in methods:
      workdir = root / f"{task}_{method}"
      print(f"[{task} {method}] training in {workdir} ...", flush=True)
      results[method] = train(task, method, workdir, settings)
      print(f"[{task} {method}] analysing ...", flush=True)
      results[method]["analysis"] = analyze(task, method, workdir, args.max_examples)
    everything[task] = results
    metric = "valid_completion" if task == "nqueens8" else "exact_accuracy"
    plot(task, results, root / f"frontier_{task}.png", metric)
    print(report(task, results), flush=True)
  (root / "results.json").write_text(json.dumps(everything, indent=1))
  print(f"\nwrote {root / 'results.json'} and frontier PNGs under {root}")
  return 0


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.exit(main())
