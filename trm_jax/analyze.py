r"""Policy-improvement analysis of a trained run: what each recursion step does, and what each
inference strategy buys per forward pass.

    python -m trm_jax.analyze --workdir /tmp/smoke [--split test] [--max_examples 1000]
        [--guidance_ws 0.5,1,1.5,2,3] [--converge_ks 1,2] [--out DIR]

The run's own config (config.json) and newest checkpoint are read (`trm_jax.load`); nothing is
restated. Writes to --out (default <workdir>/analysis): analysis.txt (the tables printed),
analysis.json (every number), trajectory.png (accuracy and advantage margin against forward
passes, one point per answer-state update), last_useful.png (the distribution of the last
forward pass that changed a prediction) and frontier.png (accuracy against forward passes per
example for every inference strategy). Definitions: trm_jax/readouts.py, trm_jax/inference.py.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from typing import Any

from absl import app, flags
from etils import epath

_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (or a checkpoint directory)")
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: the newest)")
_SPLIT = flags.DEFINE_enum("split", "auto", ["auto", "validation", "test", "train"],
                           "dataset split to analyse (auto: validation where the run's dataset "
                           "has one, as every choice should read it; else test)")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", 1000, "examples analysed (0: all)")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 0, "examples per batch (0: the run's "
                                   "eval.global_batch_size)")
_WS = flags.DEFINE_string("guidance_ws", "0.5,1,1.5,2,3", "guidance scales compared")
_KS = flags.DEFINE_string("converge_ks", "1,2", "convergence-halting patiences compared")
_ROLLOUTS = flags.DEFINE_string("rollouts", "", "test-time scaling: K,noise[,K,noise...] pairs "
                                "compared, each with every pick rule the model allows")
_CFG_WS = flags.DEFINE_string("cfg_ws", "", "classifier-free guidance scales compared (a model "
                              "trained with conditioning dropout, e.g. DIS cfg_dropout > 0)")
_MARGIN_W = flags.DEFINE_float("margin_w", 1.0, "guidance scale of the advantage margin's policy")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data_dir (default: the run's)")
_OUT = flags.DEFINE_string("out", None, "output directory (default <workdir>/analysis)")
_IMPORTS = flags.DEFINE_multi_string("imports", [], "modules to import first (ones that "
                                     "register a scheme of your own)")


def _floats(text: str, flag: str) -> list[float]:
  try:
    return [float(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise app.UsageError(f"--{flag}={text!r}: expected comma-separated numbers") from None


def _pairs(text: str) -> list[tuple[int, float]]:
  values = _floats(text, "rollouts")
  if len(values) % 2 or any(k < 2 or k != int(k) for k in values[::2]):
    raise app.UsageError(f"--rollouts={text!r}: pairs K,noise with K >= 2")
  return [(int(k), noise) for k, noise in zip(values[::2], values[1::2])]


def strategies_for(spec, ws: list[float], ks: list[int], cfg_ws: list[float] = (),
                   rollouts: list[tuple[int, float]] = ()):
  """The inference strategies compared besides the fixed budgets (read off plain inference):
  plain inference, guidance scales at the full budget (step guidance; classifier-free guidance at
  `cfg_ws`), Q-head halting where the scheme has a trained head, convergence halting with each
  patience, and test-time scaling with K rollouts at each (K, noise) of `rollouts`, picked by
  vote and, with a halting head, by the head (at the full budget and first-to-halt)."""
  from trm_jax import inference
  from trm_jax import model as model_lib
  capabilities = model_lib.scheme_of(spec).capabilities()
  head = "halting_head" in capabilities
  out = [inference.Strategy()]
  if "reference_readout" in capabilities:
    out += [inference.Strategy(guidance_w=w) for w in ws if w != 1.0]
  out += [inference.Strategy(guidance="cfg", guidance_w=w) for w in cfg_ws]
  if head:
    out.append(inference.Strategy(halt="q"))
  out += [inference.Strategy(halt="converged", converge_k=k) for k in ks]
  for k, noise in rollouts:
    out.append(inference.Strategy(rollouts=k, noise=noise, pick="vote"))
    if head:
      out.append(inference.Strategy(rollouts=k, noise=noise, pick="q"))
      out.append(inference.Strategy(rollouts=k, noise=noise, pick="first_halt", halt="q"))
  return out


def analyze(run, source, *, max_examples: int, batch_size: int, ws: list[float],
            ks: list[int], margin_w: float = 1.0, scorers=None, cfg_ws: list[float] = (),
            rollouts: list[tuple[int, float]] = (), per_example: bool = False
            ) -> dict[str, Any]:
  """The trajectory summary and the strategy table over the first `max_examples` of `source`.

  `scorers`: name -> fn(batch, preds) -> [B] 0/1, extra per-example success measures of the
  task (e.g. N-Queens valid completions) reported for every strategy. `per_example`: every
  strategy row also holds `examples`, {"exact" and each scorer: [n] 0/1 per example, in the
  source's order} (for intervals over puzzles and paired tests between runs)."""
  import jax
  import numpy as np
  from trm_jax import inference, readouts
  from trm_jax import model as model_lib
  from trm_jax.config import ModelSpec
  from trm_jax.data import pipeline

  scorers = scorers or {}
  spec = ModelSpec.from_config(run.model_config)
  scheme = model_lib.scheme_of(spec)
  scheme.require("reference_readout", "the per-step analysis (each step's margin is read "
                 "against the readout it starts from)")
  passes_per_step = scheme.forward_passes()
  trace = jax.jit(functools.partial(readouts.trajectory, spec=spec, guidance_w=margin_w))
  strategies = strategies_for(spec, ws, ks, cfg_ws, rollouts)
  for strategy in strategies:
    strategy.validate(spec)
  # Plain inference (the first strategy) also reports its prediction after every step: plain
  # inference stopped after k steps is its first k steps, so every budget is read off one run.
  evaluators = [jax.jit(functools.partial(inference.eval_batch, spec=spec, strategy=s,
                                          step_preds=i == 0))
                for i, s in enumerate(strategies)]
  budgets = [inference.Strategy(max_steps=k) for k in range(1, spec.halt_max_steps)]
  budgets.append(strategies[0])
  empty = lambda: dict(exact=0.0, token=0.0, steps=0.0, examples={"exact": []},
                       **{k: 0.0 for k in scorers})
  results = [empty() for _ in strategies[1:]]
  budget_results = [empty() for _ in budgets]
  sums, last_useful, n = None, [], 0
  for batch in pipeline.eval_batches(source, global_batch_size=batch_size):
    valid = batch.pop("valid")
    if max_examples:
      valid &= np.arange(len(valid)) + n < max_examples
    if not valid.any():
      break
    stats = jax.device_get(trace(run.params, batch))
    weighted = {k: (stats[k] * valid).sum(-1) for k in readouts.POINT_SUMS}
    sums = weighted if sums is None else {k: sums[k] + weighted[k] for k in sums}
    last_useful.append(readouts.last_useful_point(stats["changed"])[valid])
    plain = jax.device_get(evaluators[0](run.params, batch))
    for k, result in enumerate(budget_results):
      result["exact"] += float((plain["exact"][k] * valid).sum())
      result["token"] += float((plain["token_acc"][k] * valid).sum())
      result["steps"] += float((k + 1) * valid.sum())
      result["examples"]["exact"].append(np.asarray(plain["exact"][k])[valid])
      for name, score in scorers.items():
        scored = np.asarray(score(batch, plain["step_preds"][k]), float)
        result[name] += float((scored * valid).sum())
        result["examples"].setdefault(name, []).append(scored[valid])
    for result, evaluate in zip(results, evaluators[1:]):
      out = jax.device_get(evaluate(run.params, batch))
      halting = out["steps"] - 1
      rows = np.arange(len(valid))
      result["exact"] += float((out["exact"][halting, rows] * valid).sum())
      result["token"] += float((out["token_acc"][halting, rows] * valid).sum())
      result["steps"] += float((out["cost_steps"] * valid).sum())
      result["examples"]["exact"].append(np.asarray(out["exact"][halting, rows])[valid])
      for name, score in scorers.items():
        scored = np.asarray(score(batch, out["preds"]), float)
        result[name] += float((scored * valid).sum())
        result["examples"].setdefault(name, []).append(scored[valid])
    n += int(valid.sum())
  if n == 0:
    raise ValueError("no examples to analyse (empty split?)")
  points_per_step = len(sums["tokens"]) // spec.halt_max_steps
  summary = readouts.summarize(sums, np.concatenate(last_useful), n,
                               passes_per_point=passes_per_step / points_per_step,
                               points_per_step=points_per_step)
  rows = []
  for strategy, result in zip(budgets + strategies[1:], budget_results + results):
    rows.append({"strategy": strategy.describe(), "halt": strategy.halt,
                 "guidance_w": strategy.guidance_w, "converge_k": strategy.converge_k,
                 "max_steps": strategy.steps(spec),
                 "budget_only": (strategy.halt == "fixed" and strategy.guidance_w == 1.0
                                 and strategy.rollouts == 1 and strategy.guidance == "step"),
                 "rollouts": strategy.rollouts,
                 "exact_accuracy": result["exact"] / n, "token_accuracy": result["token"] / n,
                 "guidance": strategy.guidance,
                 "forward_passes_per_example": result["steps"] / n * strategy.passes_per_step(
                     spec),
                 **{name: result[name] / n for name in scorers}})
    if per_example:
      rows[-1]["examples"] = {name: np.concatenate(parts).astype(int).tolist()
                              for name, parts in result["examples"].items()}
  summary.update(scheme=scheme.name, step=run.step, margin_w=margin_w, strategies=rows,
                 passes_per_step=passes_per_step, points_per_step=points_per_step,
                 scorers=sorted(scorers))
  return summary


def format_strategies(rows, scorers=()) -> str:
  extra = "".join(f" {name.replace('_', ' ')} |" for name in scorers)
  lines = [f"| inference strategy | exact accuracy | token accuracy |{extra} "
           "forward passes / example |", "|---" * (4 + len(scorers)) + "|"]
  for r in rows:
    more = "".join(f" {r[name]:.4f} |" for name in scorers)
    lines.append(f"| {r['strategy']} | {r['exact_accuracy']:.4f} | {r['token_accuracy']:.4f} |"
                 f"{more} {r['forward_passes_per_example']:.1f} |")
  return "\n".join(lines)


def plot(summary: dict[str, Any], out: epath.Path, title: str) -> list[epath.Path]:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  from trm_jax import readouts
  from trm_jax.plot import save_figure

  points = summary["points"]
  passes = [p["forward_passes"] for p in points]
  step_ends = [p["forward_passes"] for p in points
               if p["point"] % summary["points_per_step"] == 0]
  fig, (acc_ax, margin_ax) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
  acc_ax.plot(passes, [p["exact_accuracy"] for p in points], "o-", ms=3, label="exact accuracy")
  acc_ax.plot(passes, [p["token_accuracy"] for p in points], "s-", ms=3, label="token accuracy")
  acc_ax.plot(passes, [p["rows_changed"] for p in points], "^:", ms=3,
              label="examples whose prediction changed")
  acc_ax.set_ylabel("fraction")
  acc_ax.set_ylim(-0.02, 1.02)
  acc_ax.legend(loc="center right", fontsize=8)
  acc_ax.set_title(title)
  margin_ax.plot(passes, [p["margin"] for p in points], "o-", ms=3, color="C3",
                 label=f"mean advantage margin (w={summary['margin_w']:g})")
  margin_ax.axhline(0.0, color="k", lw=0.8)
  margin_ax.set_ylabel("advantage margin (nats)")
  margin_ax.set_xlabel("forward passes per example")
  share = margin_ax.twinx()
  share.plot(passes, [p["margin_positive"] for p in points], "^--", ms=3, color="C2",
             label=f"tokens with margin > {readouts.MARGIN_TOL:g}")
  share.plot(passes, [p["margin_negative"] for p in points], "v--", ms=3, color="C4",
             label=f"tokens with margin < -{readouts.MARGIN_TOL:g}")
  share.set_ylim(-0.02, 1.02)
  share.set_ylabel("fraction of tokens")
  lines = margin_ax.get_legend_handles_labels()
  more = share.get_legend_handles_labels()
  margin_ax.legend(lines[0] + more[0], lines[1] + more[1], loc="center right", fontsize=8)
  for ax in (acc_ax, margin_ax):
    for x in step_ends:
      ax.axvline(x, color="grey", lw=0.5, ls=":")
  fig.tight_layout()
  paths = [out / "trajectory.png"]
  save_figure(fig, paths[-1])
  plt.close(fig)

  histogram = np.asarray(summary["last_useful_point_histogram"])
  per_point = summary["forward_passes_per_example"] / max(len(points), 1)
  fig, ax = plt.subplots(figsize=(8, 3.5))
  ax.bar(np.arange(len(histogram)) * per_point, histogram / max(histogram.sum(), 1),
         width=0.8 * per_point)
  ax.set_xlabel("last forward pass that changed the prediction (0: none did)")
  ax.set_ylabel("fraction of examples")
  ax.set_title(f"{title}: dead compute {100 * summary['dead_fraction']:.1f}% of "
               f"{summary['forward_passes_per_example']:g} passes")
  fig.tight_layout()
  paths.append(out / "last_useful.png")
  save_figure(fig, paths[-1])
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(8, 5))
  budget = [r for r in summary["strategies"] if r["budget_only"]]
  ax.plot([r["forward_passes_per_example"] for r in budget],
          [r["exact_accuracy"] for r in budget], "o-", color="grey", lw=0.8, zorder=2,
          label="plain inference, fixed budgets of 1..N_sup steps")
  others = [r for r in summary["strategies"] if not r["budget_only"]]
  markers = {"fixed": "D", "q": "s", "converged": "^"}
  for i, r in enumerate(others):
    ax.scatter(r["forward_passes_per_example"], r["exact_accuracy"], s=40, zorder=3,
               marker="*" if r["rollouts"] > 1 else markers[r["halt"]],
               color=plt.cm.tab20(i % 20), label=r["strategy"])
  ax.set_xlabel("forward passes per example")
  ax.set_ylabel("exact accuracy")
  ax.set_title(f"{title}: accuracy against compute per inference strategy")
  ax.legend(loc="lower right", fontsize=7)
  fig.tight_layout()
  paths.append(out / "frontier.png")
  save_figure(fig, paths[-1])
  plt.close(fig)
  return paths


def task_scorers(config, spec) -> dict:
  """Per-example success measures of the run's task beyond exact match."""
  if config.data.builder == "nqueens":
    import math
    from trm_jax.data import nqueens
    n = math.isqrt(spec.seq_len)
    return {"valid_completion": lambda batch, preds: nqueens.valid_completions(
        batch["inputs"], preds, n)}
  return {}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  import importlib
  import trm_jax
  from trm_jax import console, readouts
  from trm_jax.data import datasets
  console.quiet_unless_verbose()

  for module in _IMPORTS.value:
    importlib.import_module(module)

  ws = _floats(_WS.value, "guidance_ws")
  ks = [int(k) for k in _floats(_KS.value, "converge_ks")]
  if any(k < 1 or k != int(k) for k in _floats(_KS.value, "converge_ks")):
    raise app.UsageError("--converge_ks: positive integers")
  run = trm_jax.load(_WORKDIR.value, _STEP.value)
  data_cfg = run.config.data
  if _DATA_DIR.value:
    data_cfg.data_dir = _DATA_DIR.value
  builder = datasets.builder_for(data_cfg)
  if not builder.is_prepared():
    raise FileNotFoundError(f"dataset '{data_cfg.builder}/{builder.builder_config.name}' is not "
                            f"built under {data_cfg.data_dir} (the run's data.data_dir); pass "
                            "--data_dir")
  sources = builder.as_data_source()
  split = _SPLIT.value
  if split == "auto":
    split = "validation" if "validation" in sources else "test"
  if split not in sources:
    raise app.UsageError(f"--split={split}: the run's dataset has the splits {sorted(sources)}")
  source = sources[split]
  batch_size = _BATCH_SIZE.value or run.config.eval.global_batch_size
  start = time.time()
  from trm_jax.config import ModelSpec
  scorers = task_scorers(run.config, ModelSpec.from_config(run.model_config))
  summary = analyze(run, source, max_examples=_MAX_EXAMPLES.value, batch_size=batch_size,
                    ws=ws, ks=ks, margin_w=_MARGIN_W.value, scorers=scorers,
                    cfg_ws=_floats(_CFG_WS.value, "cfg_ws"), rollouts=_pairs(_ROLLOUTS.value))
  summary.update(workdir=str(run.workdir), split=split, seconds=time.time() - start)
  out = epath.Path(_OUT.value) if _OUT.value else run.workdir / "analysis"
  out.mkdir(parents=True, exist_ok=True)
  title = f"{summary['scheme']} step {run.step}, {split}"
  text = "\n\n".join([f"{title}: {summary['examples']} examples, "
                      f"{summary['passes_per_step']} forward passes per supervision step",
                      readouts.format_table(summary),
                      format_strategies(summary["strategies"], summary["scorers"])])
  (out / "analysis.txt").write_text(text + "\n")
  (out / "analysis.json").write_text(json.dumps(summary, indent=1))
  paths = plot(summary, out, title)
  print(text)
  print(f"\nwrote {out / 'analysis.txt'}, {out / 'analysis.json'}, "
        + ", ".join(str(p.name) for p in paths))


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main, argv=sys.argv)
