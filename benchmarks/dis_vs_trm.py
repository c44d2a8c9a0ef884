r"""DIS against TRM as a protocol: equal optimiser updates, every choice made on validation, the
test split read once per run, measured training cost, seeds, intervals and corrected tests.

    python benchmarks/dis_vs_trm.py --root /tmp/dis_vs_trm [--tasks sudoku6,nqueens8]
        [--methods trm,trm_small,dis,dis_halt] [--seeds 3] [--updates sudoku6=400,nqueens8=300]
        [--schedules constant,cosine] [--report_only]

Methods (one network: the smoke run's, hidden 64, two mlp_t blocks; one optimiser and batch 128):
  trm        TRM as the paper runs it: T=3, n=6, N_sup 16, ACT Q head with exploration 0.1
  trm_small  TRM with DIS's recursion size: T=1, n=2 (3 network calls per step), N_sup 16, ACT
  dis        DIS as the official code runs it: T=1, n=2, N_sup 6, step targets, no halting head
  dis_halt   DIS with a learned halting head (scheme_options.halting='learned')
Tasks:
  sudoku6    generated 6x6 Sudoku (the smoke run's data): 2,000 training puzzles x 20
             augmentations, 10% of them (with their augmentations) held out for validation,
             500 test puzzles; continuity with the earlier measurements
  nqueens8   N-Queens 8x8, the official DIS sets (800 puzzles x 9 dihedral versions, 200 test),
             20% of the training puzzles held out for validation (minus boards that occur in
             training); scored on the whole official test set and on its part whose input
             board does not occur in training (the official test repeats training boards)

Protocol, per task:
1. Every method trains for the same number of optimiser updates (--updates) with each schedule
   of the grid (--schedules: the lr constant after a warm-up of a tenth of the updates, or
   cosine-decayed to 0.1x after it) at
   seed 0; the schedule with the higher validation exact accuracy (plain inference, all N_sup
   steps) is kept (ties: the first).
2. Seeds 1 .. S-1 train with the kept schedule (seed 0's run is reused).
3. Every run is analysed with every inference strategy (step budgets, guidance w, Q halting
   where there is a head, convergence halting) on validation and on test. Each method's strategy
   is the one with the highest validation exact accuracy, mean over seeds (ties: fewer passes).
4. Test, for the chosen strategy and for plain inference at N_sup: mean over seeds, 95% interval
   by bootstrap over seeds and puzzles (2,000 resamples); a paired sign-flip permutation test
   (20,000 flips) on per-puzzle seed-mean correctness for every pair of methods, p-values
   Holm-corrected over the task's pairs.
5. Pass ratios at equal accuracy: for each method, TRM's (T=3, n=6) cheapest strategy whose
   validation accuracy is at least the method's, within each family (fixed step budgets;
   Q halting or convergence; any), with the test accuracies of both.
Training cost, measured per run: optimiser updates executed, network calls (every row of every
update), network calls per training puzzle (per group of the training split), matmul FLOPs (a
jaxpr count of one train step, `train.step_flops`, times the updates), training-loop seconds
(metrics.jsonl windows, evaluation excluded) and the training process's wall seconds.

Every run trains in a child process (`trm_jax.main.run`) in <root>/<task>/<method>/<schedule>_s<seed>;
a finished run there is reused only when its config is the one asked for. Writes results.json
(commit, configs, seeds, which split chose what, per-run costs and analyses), report.md (the
tables) and frontier_<task>.png under --root.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ("trm", "trm_small", "dis", "dis_halt")
LABELS = {"trm": "TRM (T=3, n=6, N_sup 16, ACT)", "trm_small": "TRM (T=1, n=2, N_sup 16, ACT)",
          "dis": "DIS (T=1, n=2, N_sup 6)", "dis_halt": "DIS + halting head"}
TASKS = ("sudoku6", "nqueens8")
UPDATES = {"sudoku6": 400, "nqueens8": 300}
SCHEDULES = {"constant": 1.0, "cosine": 0.1}  # lr_min_ratio
WS = (0.5, 1.0, 1.5, 2.0)  # guidance scales analysed (strategies chosen on validation)
KS = (1, 2)  # convergence patiences
BOOTSTRAP, FLIPS = 2000, 20000


def make_config(task: str, method: str, schedule: str, seed: int, updates: int):
  from experiments import common, sudoku
  config = sudoku.get_config("smoke")  # network, optimiser and (sudoku6) the data
  if task == "nqueens8":
    from experiments import nqueens
    config.data = nqueens.get_config("").data
    config.data.builder_config.validation_fraction = 0.2
    config.model.seq_len, config.model.vocab_size = 64, 3
    config.eval.global_batch_size = 200
  model = config.model
  if method in ("trm", "trm_small"):
    model.H_cycles, model.L_cycles = (3, 6) if method == "trm" else (1, 2)
    model.halt_max_steps = 16
  else:
    common.dis(model, n_sup=6)
    if method == "dis_halt":
      model.scheme_options.halting = "learned"
  config.train.max_steps = updates
  config.train.lr_warmup_steps = max(1, updates // 10)
  config.train.epochs = 1000  # max_steps decides; evaluated (validation) at the last step only
  config.train.eval_interval = 1000
  config.train.lr_min_ratio = SCHEDULES[schedule]
  config.train.seed = seed
  config.train.keep_best_checkpoints = 0
  config.train.keep_checkpoints = 1
  return config


# ------------------------------------------------------------------------------ one run --


def child(task, method, schedule, seed, updates, workdir: pathlib.Path) -> None:
  """Trains one run in this process, then writes its measured cost (cost.json)."""
  import jax
  from trm_jax import main as main_lib, model as model_lib
  from trm_jax import train as train_lib
  from trm_jax.config import ModelSpec
  from trm_jax.data import datasets, pipeline
  import ml_collections
  main_lib.apply_host_settings()  # as `python -m trm_jax.main` does, before JAX starts
  cfg = make_config(task, method, schedule, seed, updates)
  shared = workdir.parents[2] / "data"  # one built dataset per task for all its runs
  cfg.data.data_dir = str(shared / "tfds")
  if cfg.data.generate.get("kind"):
    cfg.data.manual_dir = str(shared / f"raw_{task}")
  start = time.time()
  main_lib.run(cfg, str(workdir))
  wall = time.time() - start
  resolved = json.loads((workdir / "config.json").read_text())
  cfg = ml_collections.ConfigDict(resolved)
  model_cfg = cfg.model
  spec = ModelSpec.from_config(model_cfg)
  data = datasets.prepare(cfg.data)
  batch = next(iter(pipeline.train_dataset(data.train, data.train_index, seed=0,
                                           global_batch_size=cfg.train.global_batch_size,
                                           num_epochs=1)))
  total = cfg.train.max_steps
  state = jax.eval_shape(lambda: train_lib.init_state(model_cfg, cfg.train, batch, total,
                                                      jax.random.key(0)))
  step_flops = train_lib.step_flops(spec, cfg.train, total, state, batch)
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  train = [r for r in records if r["kind"] == "train"]
  updates_done = train[-1]["step"]
  loop_seconds, previous = 0.0, 0
  for r in train:
    loop_seconds += (r["step"] - previous) / r["steps_per_s"]
    previous = r["step"]
  calls_per_row = model_lib.forward_passes_per_step(spec)
  calls = updates_done * cfg.train.global_batch_size * calls_per_row
  cost = {
      "updates": updates_done, "global_batch_size": cfg.train.global_batch_size,
      "network_calls_per_row_per_update": calls_per_row, "network_calls": calls,
      "training_puzzles": data.train_index.num_groups,
      "network_calls_per_training_puzzle": calls / data.train_index.num_groups,
      "puzzles_finished": sum(r["count"] for r in train),
      "train_step_matmul_flops": step_flops, "train_matmul_flops": step_flops * updates_done,
      "train_loop_seconds": loop_seconds, "process_seconds": wall,
  }
  (workdir / "cost.json").write_text(json.dumps(cost, indent=1))


def train(task, method, schedule, seed, updates, root: pathlib.Path) -> pathlib.Path:
  workdir = root / task / method / f"{schedule}_s{seed}"
  want = make_config(task, method, schedule, seed, updates)
  done = workdir / "cost.json"
  if done.exists():
    have = json.loads((workdir / "config.json").read_text())
    for section in ("train", "data"):
      mine = json.loads(json.dumps(want[section].to_dict(), default=str))
      theirs = {k: have[section].get(k) for k in mine}
      if section == "data":  # folders filled in by the run
        mine = {k: v for k, v in mine.items() if k not in ("data_dir", "manual_dir")}
        theirs = {k: v for k, v in theirs.items() if k in mine}
      if mine != theirs:
        raise SystemExit(f"{workdir} holds a finished run of another config ({section}); "
                         "use another --root or remove it")
    return workdir
  print(f"[{task} {method} {schedule} seed {seed}] training {updates} updates in {workdir}",
        flush=True)
  subprocess.run([sys.executable, __file__, "--child",
                  f"{task}:{method}:{schedule}:{seed}:{updates}", "--root", str(workdir)],
                 check=True, cwd=ROOT)
  return workdir


def analyse(task: str, workdir: pathlib.Path, split: str) -> dict:
  """Every strategy on `split` of the run's data (cached in analysis_<split>.json)."""
  out = workdir / f"analysis_{split}.json"
  if out.exists():
    return json.loads(out.read_text())
  import trm_jax
  from trm_jax import analyze as analyze_lib
  from trm_jax.config import ModelSpec
  from trm_jax.data import datasets
  run = trm_jax.load(workdir)
  data = datasets.prepare(run.config.data)
  source = data.validation if split == "validation" else data.test
  scorers = analyze_lib.task_scorers(run.config, ModelSpec.from_config(run.model_config))
  result = analyze_lib.analyze(run, source, max_examples=0,
                               batch_size=run.config.eval.global_batch_size, ws=list(WS),
                               ks=list(KS), scorers=scorers, per_example=True)
  result["split"] = split
  if task == "nqueens8" and split == "test":  # which test boards also occur in training
    train_inputs = {data.train[i]["inputs"].tobytes() for i in range(len(data.train))}
    result["seen_in_training"] = [int(source[i]["inputs"].tobytes() in train_inputs)
                                  for i in range(len(source))]
  out.write_text(json.dumps(result))
  return result


# ------------------------------------------------------------------------------ statistics --


def bootstrap_interval(correct: np.ndarray, rng, n: int = BOOTSTRAP) -> tuple[float, float]:
  """95% percentile interval of the mean of `correct` [seeds, puzzles], resampling seeds and
  puzzles with replacement."""
  s, p = correct.shape
  seeds = rng.integers(0, s, (n, s))
  puzzles = rng.integers(0, p, (n, p))
  means = np.asarray([correct[seeds[i]][:, puzzles[i]].mean() for i in range(n)])
  return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def paired_permutation_p(a: np.ndarray, b: np.ndarray, rng, n: int = FLIPS) -> float:
  """Two-sided p of a paired sign-flip test on per-puzzle differences of seed-mean correctness
  (a, b: [seeds, puzzles] over the same puzzles)."""
  d = a.mean(0) - b.mean(0)
  observed = abs(d.sum())
  if observed == 0:
    return 1.0
  signs = rng.choice((-1.0, 1.0), size=(n, len(d)))
  return float((1 + np.sum(np.abs(signs @ d) >= observed - 1e-12)) / (n + 1))


# ------------------------------------------------------------------------------ the protocol --


def mean_rows(analyses: list[dict], metric: str, subset=None) -> dict[str, dict]:
  """Strategy -> {accuracy (mean over seeds), passes, correct [seeds, puzzles]}."""
  out = {}
  for row_index, row in enumerate(analyses[0]["strategies"]):
    rows = [a["strategies"][row_index] for a in analyses]
    correct = np.asarray([r["examples"][metric] for r in rows], float)
    if subset is not None:
      correct = correct[:, subset]
    out[row["strategy"]] = dict(
        row=row, accuracy=float(correct.mean()), correct=correct,
        passes=float(np.mean([r["forward_passes_per_example"] for r in rows])))
  return out


def choose(validation: dict[str, dict]) -> str:
  """The strategy with the highest validation accuracy; ties: fewer passes."""
  return max(validation, key=lambda k: (round(validation[k]["accuracy"], 12),
                                        -validation[k]["passes"]))


def full_budget(rows: dict[str, dict]) -> str:
  budget = [k for k, v in rows.items() if v["row"]["budget_only"]]
  return max(budget, key=lambda k: rows[k]["row"]["max_steps"])


FAMILIES = {"fixed steps": lambda row: row["halt"] == "fixed" and row["guidance_w"] == 1.0,
            "Q halting / convergence": lambda row: row["halt"] in ("q", "converged"),
            "any": lambda row: True}


def evaluate_task(task: str, runs: dict[str, list[pathlib.Path]], choices: dict) -> dict:
  from trm_jax import significance
  rng = np.random.default_rng(0)
  metrics = ["exact"] + (["valid_completion"] if task == "nqueens8" else [])
  out = {"methods": {}, "pairs": [], "ratios": []}
  val, test = {}, {}
  subsets = {"all": None}
  for method, workdirs in runs.items():
    va = [analyse(task, w, "validation") for w in workdirs]
    te = [analyse(task, w, "test") for w in workdirs]
    if task == "nqueens8":
      seen = np.asarray(te[0]["seen_in_training"], bool)
      subsets["not in training"] = np.flatnonzero(~seen)
    val[method] = mean_rows(va, "exact")
    test[method] = {(metric, name): mean_rows(te, metric, subset)
                    for metric in metrics for name, subset in subsets.items()}
    chosen = choose(val[method])
    plain = full_budget(val[method])
    entry = {"strategy_chosen_on_validation": chosen, "seeds": len(workdirs),
             "schedule_chosen_on_validation": choices[method],
             "validation": {k: {"accuracy": v["accuracy"], "passes": v["passes"]}
                            for k, v in val[method].items()},
             "test": {}, "cost": [json.loads((w / "cost.json").read_text()) for w in workdirs]}
    for (metric, name), rows in test[method].items():
      for label, key in (("chosen", chosen), ("plain N_sup", plain)):
        lo, hi = bootstrap_interval(rows[key]["correct"], rng)
        entry["test"][f"{metric} / {name} / {label}"] = {
            "strategy": key, "mean": rows[key]["accuracy"], "ci95": [lo, hi],
            "per_seed": rows[key]["correct"].mean(1).tolist(), "passes": rows[key]["passes"],
            "puzzles": int(rows[key]["correct"].shape[1])}
    out["methods"][method] = entry
  # Paired tests between every pair of methods (chosen strategies), Holm over the task's pairs.
  names = list(runs)
  for metric in metrics:
    for name in subsets:
      family = []
      for i, a in enumerate(names):
        for b in names[i + 1:]:
          ka = out["methods"][a]["strategy_chosen_on_validation"]
          kb = out["methods"][b]["strategy_chosen_on_validation"]
          ca, cb = test[a][(metric, name)][ka]["correct"], test[b][(metric, name)][kb]["correct"]
          family.append({"metric": metric, "subset": name, "a": a, "b": b,
                         "difference": float(ca.mean() - cb.mean()),
                         "p": paired_permutation_p(ca, cb, rng)})
      for row, adjusted in zip(family, significance.holm([r["p"] for r in family])):
        row["p_holm"] = adjusted
      out["pairs"] += family
  # Pass ratios at equal accuracy (chosen on validation) against TRM (T=3, n=6).
  if "trm" in runs:
    for method in names:
      if method == "trm":
        continue
      key = out["methods"][method]["strategy_chosen_on_validation"]
      target = val[method][key]["accuracy"]
      for family, member in FAMILIES.items():
        reach = [k for k, v in val["trm"].items()
                 if member(v["row"]) and v["accuracy"] >= target - 1e-12]
        row = {"method": method, "family": family, "method_strategy": key,
               "method_passes": val[method][key]["passes"], "method_validation": target,
               "method_test": test[method][("exact", "all")][key]["accuracy"]}
        if reach:
          cheapest = min(reach, key=lambda k: val["trm"][k]["passes"])
          row.update(trm_strategy=cheapest, trm_passes=val["trm"][cheapest]["passes"],
                     trm_validation=val["trm"][cheapest]["accuracy"],
                     trm_test=test["trm"][("exact", "all")][cheapest]["accuracy"],
                     ratio=val["trm"][cheapest]["passes"] / val[method][key]["passes"])
        out["ratios"].append(row)
  out["frontier"] = {m: {k: {"passes": v["passes"], "accuracy": v["accuracy"]}
                         for k, v in test[m][("exact", "all")].items()} for m in names}
  return out


def report(task: str, result: dict) -> str:
  lines = [f"### {task}", "",
           "| method | schedule (validation) | updates | network calls / training puzzle | "
           "train TFLOP (matmul) | train loop s | strategy (chosen on validation) | passes | "
           "test exact, mean [95% CI] | plain N_sup: passes, test exact |", "|---" * 10 + "|"]
  for method, m in result["methods"].items():
    cost = m["cost"]
    chosen = m["test"]["exact / all / chosen"]
    plain = m["test"]["exact / all / plain N_sup"]
    lines.append(
        f"| {LABELS[method]} | {m['schedule_chosen_on_validation']} | "
        f"{np.mean([c['updates'] for c in cost]):.0f} | "
        f"{np.mean([c['network_calls_per_training_puzzle'] for c in cost]):,.0f} | "
        f"{np.mean([c['train_matmul_flops'] for c in cost]) / 1e12:,.1f} | "
        f"{np.mean([c['train_loop_seconds'] for c in cost]):,.0f} | {chosen['strategy']} | "
        f"{chosen['passes']:.1f} | {chosen['mean']:.3f} [{chosen['ci95'][0]:.3f}, "
        f"{chosen['ci95'][1]:.3f}] | {plain['passes']:.0f}, {plain['mean']:.3f} "
        f"[{plain['ci95'][0]:.3f}, {plain['ci95'][1]:.3f}] |")
  seeds = {m["seeds"] for m in result["methods"].values()}
  lines.append(f"\nSeeds per method: {sorted(seeds)}; per-seed test exact (chosen strategy): "
               + "; ".join(f"{method} {', '.join(f'{x:.3f}' for x in m['test']['exact / all / chosen']['per_seed'])}"
                           for method, m in result["methods"].items()))
  other = sorted({k for m in result["methods"].values() for k in m["test"]
                  if not k.startswith("exact / all")})
  for key in other:
    lines.append(f"\n{key}: " + "; ".join(
        f"{method} {m['test'][key]['mean']:.3f} [{m['test'][key]['ci95'][0]:.3f}, "
        f"{m['test'][key]['ci95'][1]:.3f}] ({m['test'][key]['puzzles']} puzzles)"
        for method, m in result["methods"].items()))
  lines += ["", f"Paired tests on the test puzzles, chosen strategies (A - B: mean exact, "
            f"over seeds and puzzles; p: two-sided sign-flip test of per-puzzle seed means, "
            f"{FLIPS:,} flips, so p >= {1 / (FLIPS + 1):.1g}; Holm over the task's pairs):", "",
            "| metric / test part | A | B | A - B | p (sign-flip) | p (Holm) |",
            "|---" * 6 + "|"]
  for row in result["pairs"]:
    lines.append(f"| {row['metric']} / {row['subset']} | {row['a']} | {row['b']} | "
                 f"{row['difference']:+.3f} | {row['p']:.2g} | {row['p_holm']:.2g} |")
  if result["ratios"]:
    lines += ["", "| method (its strategy) | TRM family | TRM's cheapest strategy at least as "
              "accurate on validation | TRM passes / method passes | test exact: method, TRM |",
              "|---" * 5 + "|"]
    for r in result["ratios"]:
      if "ratio" in r:
        lines.append(f"| {r['method']} ({r['method_strategy']}, {r['method_passes']:.1f}) | "
                     f"{r['family']} | {r['trm_strategy']} ({r['trm_passes']:.1f}) | "
                     f"{r['ratio']:.2f}x | {r['method_test']:.3f}, {r['trm_test']:.3f} |")
      else:
        lines.append(f"| {r['method']} ({r['method_strategy']}, {r['method_passes']:.1f}) | "
                     f"{r['family']} | none reaches its validation accuracy "
                     f"({r['method_validation']:.3f}) | - | {r['method_test']:.3f}, - |")
  return "\n".join(lines)


def plot(task: str, result: dict, path: pathlib.Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(8, 5))
  for i, (method, m) in enumerate(result["methods"].items()):
    color = plt.cm.tab10(i)
    frontier = result["frontier"][method]
    budgets = sorted((v["passes"], v["accuracy"]) for k, v in frontier.items()
                     if k.startswith("w=1, fixed"))
    ax.plot(*zip(*budgets), "o-", color=color, ms=3, lw=1, label=f"{LABELS[method]}: budgets")
    others = [(v["passes"], v["accuracy"]) for k, v in frontier.items()
              if not k.startswith("w=1, fixed")]
    if others:
      ax.scatter(*zip(*others), marker="x", color=color, s=20)
    chosen = m["test"]["exact / all / chosen"]
    ax.errorbar([chosen["passes"]], [chosen["mean"]],
                yerr=[[chosen["mean"] - chosen["ci95"][0]], [chosen["ci95"][1] - chosen["mean"]]],
                fmt="*", color=color, ms=12, capsize=3)
  ax.set_xscale("log")
  ax.set_xlabel("inference network calls per puzzle (log)")
  ax.set_ylabel("test exact accuracy (mean over seeds)")
  ax.set_title(f"{task}: test accuracy against inference compute at equal training updates\n"
               "(lines: plain inference at 1..N_sup steps; x: other strategies; star with 95% "
               "CI: strategy chosen on validation)", fontsize=8)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main() -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog=__doc__.split("\n\n", 1)[1])
  p.add_argument("--root", required=True, help="directory for the runs and the results")
  p.add_argument("--tasks", default=",".join(TASKS))
  p.add_argument("--methods", default=",".join(METHODS))
  p.add_argument("--seeds", type=int, default=3)
  p.add_argument("--updates", default=",".join(f"{k}={v}" for k, v in UPDATES.items()),
                 help="optimiser updates per task, every method the same")
  p.add_argument("--schedules", default=",".join(SCHEDULES))
  p.add_argument("--report_only", action="store_true",
                 help="train nothing: report the finished runs under --root")
  p.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  root = pathlib.Path(args.root).absolute()
  if args.child:
    task, method, schedule, seed, updates = args.child.split(":")
    child(task, method, schedule, int(seed), int(updates), root)
    return 0

  tasks = [t for t in args.tasks.split(",") if t]
  methods = [m for m in args.methods.split(",") if m]
  schedules = [s for s in args.schedules.split(",") if s]
  updates = dict(UPDATES)
  try:
    updates.update({k: int(v) for k, v in (x.split("=") for x in args.updates.split(",") if x)})
  except ValueError:
    raise SystemExit(f"--updates {args.updates!r}: give task=N pairs, e.g. sudoku6=400")
  for name, allowed, given in (("--tasks", TASKS, tasks), ("--methods", METHODS, methods),
                               ("--schedules", tuple(SCHEDULES), schedules)):
    if not given or any(x not in allowed for x in given):
      raise SystemExit(f"{name}: choose from {allowed}")
  if args.seeds < 1 or any(updates[t] < 1 for t in tasks):
    raise SystemExit("--seeds and --updates must be >= 1")
  root.mkdir(parents=True, exist_ok=True)
  from trm_jax import runs as runs_lib
  code = runs_lib.code_version()
  commit = code.get("commit", code.get("version")) + (" (with local changes)" * code.get("dirty", False))
  everything = {"code": code, "seeds": args.seeds, "updates": updates,
                "schedules": {s: SCHEDULES[s] for s in schedules}, "tasks": {},
                "chosen_on_validation": "schedule per method (seed 0, plain inference at "
                                        "N_sup), inference strategy per method (mean over "
                                        "seeds), TRM's matching strategy for pass ratios",
                "read_on_test": "every reported accuracy, interval and test"}
  report_text = []
  for task in tasks:
    runs, choices, configs = {}, {}, {}
    for method in methods:
      finished = lambda s, seed: (root / task / method / f"{s}_s{seed}" / "cost.json").exists()
      if args.report_only and not all(finished(s, 0) for s in schedules):
        continue
      scores = {}
      for schedule in schedules:
        workdir = train(task, method, schedule, 0, updates[task], root)
        scores[schedule] = mean_rows([analyse(task, workdir, "validation")], "exact")
        scores[schedule] = scores[schedule][full_budget(scores[schedule])]["accuracy"]
      best = max(schedules, key=lambda s: scores[s])  # ties: the first
      choices[method] = f"{best} (validation: " + ", ".join(
          f"{s} {v:.3f}" for s, v in scores.items()) + ")"
      seeds = [s for s in range(args.seeds)
               if not args.report_only or finished(best, s)]
      runs[method] = [train(task, method, best, seed, updates[task], root) for seed in seeds]
      configs[method] = make_config(task, method, best, 0, updates[task]).to_dict()
    if not runs:
      continue
    result = evaluate_task(task, runs, choices)
    result["configs"] = json.loads(json.dumps(configs, default=str))
    everything["tasks"][task] = result
    text = report(task, result)
    report_text.append(text)
    print(text, flush=True)
    plot(task, result, root / f"frontier_{task}.png")
  (root / "results.json").write_text(json.dumps(everything, indent=1))
  (root / "report.md").write_text(f"commit {commit}\n\n" + "\n\n".join(report_text) + "\n")
  print(f"\nwrote {root / 'results.json'}, {root / 'report.md'} and frontier PNGs under {root}")
  return 0


if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.exit(main())
