r"""Per-refinement-step evaluation of an RLRP run (scheme 'rlrp', data builder 'rlrp').

    python -m trm_jax.lm_eval --workdir DIR [--step N] [--max_examples 0]

Rebuilds the run's held-out corpora from its config (they are generated / read
deterministically) and reads every refinement step's logits (`Readout.trace`) through
`analysis.trajectory`, so each step k = 1..K is one readout point whose reference is step k-1
(step 0: logits_0, the readout of u_0 = h):
  arithmetic  labels = the answer digits only: token accuracy, answer exact match
              (teacher-forced, equal to greedy decoding of the answer), CE and the advantage
              margin between consecutive steps;
  fluency     labels = every next byte of the held-out text windows: CE, perplexity, margin.
On the arithmetic it also pairs the readouts problem by problem (McNemar's exact test,
`analysis.paired_exact_test`): every step k against step 1, and with `--baseline DIR` (another
RLRP run with the same held-out problems, e.g. the K = 1 baseline) this run's step K against the
baseline's last step; and it splits exact match by operation (+, *) and the additions by their
carries (0, 1, 2, 3 or more).
Writes <workdir>/lm_eval/{lm_eval.txt, lm_eval.json, lm_eval.png} and prints the table; the
picture: answer exact match per step (all, +, *; the baseline's as a dashed line), and the answer
and text CE per step minus step 1's.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from typing import Any, Mapping

from absl import app, flags


def _define_flags() -> None:
  """The CLI's flags, defined only when run as a program (importing the evaluation next to
  trm_jax.main, which defines --workdir too, must not clash)."""
  flags.DEFINE_string("workdir", None, "run directory (or a checkpoint directory)")
  flags.DEFINE_integer("step", None, "checkpoint step (default: the newest)")
  flags.DEFINE_integer("max_examples", 0, "examples per corpus (0: all)")
  flags.DEFINE_integer("batch_size", 256, "examples per batch")
  flags.DEFINE_string("baseline", None, "another RLRP run (or checkpoint) on the same held-out "
                      "arithmetic: its last step is paired with this run's step K")
  flags.mark_flags_as_required(["workdir"])


def evaluate_steps(params, spec, records: Mapping[str, Any], *, batch_size: int,
                   max_examples: int = 0) -> tuple[dict[str, Any], Any]:
  """(`analysis.summarize` of every refinement step over `records` (inputs, labels with PAD
  ignored), a point being one step and its forward passes the head calls so far; the per-row
  exact match [K, n], 0/1)."""
  import jax
  import numpy as np
  from trm_jax import analysis, losses
  from trm_jax.data import lm

  n = len(records["inputs"]) if not max_examples else min(max_examples, len(records["inputs"]))
  trace = jax.jit(functools.partial(analysis.trajectory, spec=spec))
  sums, last_useful, exact = None, [], []
  for start in range(0, n, batch_size):
    rows = np.minimum(np.arange(start, start + batch_size), n - 1)  # the last batch padded
    valid = np.arange(start, start + batch_size) < n
    labels = records["labels"][rows]
    batch = {"inputs": records["inputs"][rows].astype(np.int32),
             "labels": np.where(labels == lm.PAD, losses.IGNORE_LABEL_ID, labels).astype(np.int32),
             "puzzle_identifiers": np.zeros((batch_size,), np.int32)}
    stats = jax.device_get(trace(params, batch))
    batch_sums = {k: (np.asarray(stats[k]) * valid).sum(-1) for k in analysis.POINT_SUMS}
    sums = batch_sums if sums is None else {k: sums[k] + batch_sums[k] for k in sums}
    last_useful.append(analysis.last_useful_point(stats["changed"])[valid])
    exact.append(np.asarray(stats["exact"])[:, valid])
  points = len(sums["tokens"])
  return (analysis.summarize(sums, np.concatenate(last_useful), n, passes_per_point=1,
                             points_per_step=points),
          np.concatenate(exact, axis=1).astype(bool))


def _load_checked(run):
  from trm_jax.config import ModelSpec
  spec = ModelSpec.from_config(run.model_config)
  if spec.scheme != "rlrp" or run.config.data.builder != "rlrp":
    raise ValueError(f"{run.workdir}: lm_eval evaluates RLRP runs (model.scheme and "
                     f"data.builder 'rlrp'); this run has scheme '{spec.scheme}' and builder "
                     f"'{run.config.data.builder}'")
  return spec


def split_exact(problems: list[str], exact) -> dict[str, Any]:
  """Exact match per step [K, n] of the problems (texts like '123+45=168') split by operation
  (+, *) and, for the additions, by their carries (3 or more pooled): a carry is a digit that
  depends on the digits to its right, which a causal reader meets only after the digit it must
  write."""
  from trm_jax.data import lm

  def part(rows):
    return {"examples": len(rows),
            "exact_accuracy": [float(e[rows].mean()) if rows else 0.0 for e in exact]}
  by_op = {op: [i for i, p in enumerate(problems) if op in p] for op in ("+", "*")}
  carries = {}
  for i in by_op["+"]:
    carries.setdefault(min(lm.carries(problems[i]), 3), []).append(i)
  return {"by_operation": {op: part(rows) for op, rows in by_op.items()},
          "additions_by_carries": {(f"{n}" if n < 3 else "3+"): part(rows)
                                   for n, rows in sorted(carries.items())}}


def evaluate_run(run, *, batch_size: int, max_examples: int = 0, baseline=None
                 ) -> dict[str, Any]:
  """The per-step tables of `run` on its held-out arithmetic and text, the paired tests of
  every step against step 1 and, given `baseline` (a loaded RLRP run), of step K against the
  baseline's last step on the same problems."""
  from trm_jax import analysis
  from trm_jax.data import lm
  spec = _load_checked(run)
  data = lm.corpora(run.config.data.builder_config)
  problems = lm.answer_only(data.arithmetic_test)
  arithmetic, exact = evaluate_steps(run.params, spec, problems, batch_size=batch_size,
                                     max_examples=max_examples)
  fluency, _ = evaluate_steps(run.params, spec, data.fluency_test, batch_size=batch_size,
                              max_examples=max_examples)
  arithmetic["paired_with_step1"] = [analysis.paired_exact_test(exact[0], exact[k])
                                     for k in range(len(exact))]
  texts = [lm.decode(row) for row in problems["inputs"]]
  arithmetic.update(split_exact(texts[:exact.shape[1]], exact))
  result = {"workdir": str(run.workdir), "step": run.step, "arithmetic": arithmetic,
            "fluency": fluency}
  if baseline is not None:
    base_spec = _load_checked(baseline)
    base_config = lm.CorpusConfig.from_config(baseline.config.data.builder_config)
    if lm.arithmetic_problems(base_config)[1] != texts:
      raise ValueError(f"--baseline {baseline.workdir}: its held-out arithmetic problems are not "
                       f"those of {run.workdir} (data.builder_config differs), so the two runs "
                       "cannot be paired problem by problem")
    base_problems = lm.answer_only(lm.arithmetic_records(texts, base_config.seq_len))
    _, base_exact = evaluate_steps(baseline.params, base_spec, base_problems,
                                   batch_size=batch_size, max_examples=max_examples)
    result["baseline"] = {"workdir": str(baseline.workdir), "step": baseline.step,
                          "exact_accuracy": float(base_exact[-1].mean()),
                          "steps": int(len(base_exact)),
                          "paired": analysis.paired_exact_test(base_exact[-1], exact[-1])}
  return result


def format_steps(result: Mapping[str, Any]) -> str:
  arith, text = result["arithmetic"]["points"], result["fluency"]["points"]
  lines = ["| refinement step | answer token acc | answer exact | answer CE | answer margin | "
           "text CE | text perplexity | text margin |", "|---|---|---|---|---|---|---|---|"]
  for a, f in zip(arith, text):
    lines.append(f"| {a['point']} | {a['token_accuracy']:.4f} | {a['exact_accuracy']:.4f} | "
                 f"{a['ce_labels']:.4f} | {a['margin']:+.4f} | {f['ce_labels']:.4f} | "
                 f"{math.exp(f['ce_labels']):.3f} | {f['margin']:+.4f} |")
  ops = result["arithmetic"]["by_operation"]
  lines += ["", "| refinement step | exact vs step 1: fixed / broken | p (McNemar, exact) | "
            + " | ".join(f"exact on {op} ({ops[op]['examples']})" for op in ops) + " |",
            "|---|---|---|" + "---|" * len(ops)]
  for k, pair in enumerate(result["arithmetic"]["paired_with_step1"]):
    lines.append(f"| {k + 1} | +{pair['fixed']} / -{pair['broken']} | {pair['p_value']:.3g} | "
                 + " | ".join(f"{ops[op]['exact_accuracy'][k]:.4f}" for op in ops) + " |")
  by_carries = result["arithmetic"]["additions_by_carries"]
  lines += ["", "| additions with carries | problems | "
            + " | ".join(f"exact step {k + 1}" for k in range(len(arith))) + " |",
            "|---|---|" + "---|" * len(arith)]
  for n, part in by_carries.items():
    lines.append(f"| {n} | {part['examples']} | "
                 + " | ".join(f"{x:.4f}" for x in part["exact_accuracy"]) + " |")
  lines += ["", f"held-out arithmetic problems: {result['arithmetic']['examples']}; held-out text "
            f"windows: {result['fluency']['examples']} (checkpoint step {result['step']})",
            "margin: the advantage margin of step k over step k-1 (step 0: logits_0 = "
            "lm_head(h + proj(h))), per supervised token; CE in nats (softmax)",
            "fixed / broken: problems that step k answers right and step 1 wrong / the reverse; "
            "p: the chance of a split at least this uneven if neither readout were better"]
  if "baseline" in result:
    base, pair = result["baseline"], result["baseline"]["paired"]
    lines += [f"against the baseline {base['workdir']} (its step {base['steps']}, exact "
              f"{base['exact_accuracy']:.4f}): step {len(arith)} fixes {pair['fixed']} and breaks "
              f"{pair['broken']} of its problems, exact {pair['difference']:+.4f}, "
              f"p = {pair['p_value']:.3g}"]
  return "\n".join(lines)


def plot_steps(result: Mapping[str, Any], path) -> None:
  """lm_eval.png: exact match per refinement step (all problems and each operation, the
  baseline's last step dashed) and the answer / text CE per step less step 1's."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  from trm_jax import plot

  arith, text = result["arithmetic"], result["fluency"]
  steps = [p["point"] for p in arith["points"]]
  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
  left.plot(steps, [p["exact_accuracy"] for p in arith["points"]], "o-", color="k",
            label=f"all ({arith['examples']})")
  for op, color in (("+", "tab:blue"), ("*", "tab:orange")):
    part = arith["by_operation"][op]
    left.plot(steps, part["exact_accuracy"], "o-", color=color, ms=4,
              label=f"{op} ({part['examples']})")
  if "baseline" in result:
    left.axhline(result["baseline"]["exact_accuracy"], color="k", ls="--", lw=1,
                 label="baseline, all")
  left.set(xlabel="refinement step", ylabel="answer exact match (held-out)", xticks=steps,
           ylim=(0, 1))
  left.legend(fontsize=7, ncol=4, loc="lower center", bbox_to_anchor=(0.5, 1.0))  # off the data
  for points, marker, name in ((arith["points"], "o-", "answer digits"),
                                (text["points"], "s-", "text bytes")):
    right.plot(steps, [p["ce_labels"] - points[0]["ce_labels"] for p in points], marker,
               label=f"{name} (step 1: {points[0]['ce_labels']:.3f})")
  right.axhline(0.0, color="k", lw=0.5)
  right.set(xlabel="refinement step", ylabel="CE per token minus step 1's (nats)",
            xticks=steps)
  right.legend(fontsize=8)
  fig.suptitle(f"{result['workdir']} (step {result['step']})", fontsize=9)
  fig.tight_layout()
  plot.save_figure(fig, path)
  plt.close(fig)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  import trm_jax
  options = flags.FLAGS
  run = trm_jax.load(options.workdir, options.step)
  baseline = trm_jax.load(options.baseline) if options.baseline else None
  result = evaluate_run(run, batch_size=options.batch_size, max_examples=options.max_examples,
                        baseline=baseline)
  out = run.workdir / "lm_eval"
  out.mkdir(parents=True, exist_ok=True)
  text = format_steps(result)
  (out / "lm_eval.txt").write_text(text + "\n")
  (out / "lm_eval.json").write_text(json.dumps(result, indent=1))
  plot_steps(result, out / "lm_eval.png")
  print(text)
  print(f"wrote {out}/lm_eval.txt, lm_eval.json and lm_eval.png")


if __name__ == "__main__":
  _define_flags()
  app.run(main, argv=sys.argv)
