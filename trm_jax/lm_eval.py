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
Writes <workdir>/lm_eval/{lm_eval.txt, lm_eval.json} and prints the table.
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
  flags.mark_flags_as_required(["workdir"])


def evaluate_steps(params, spec, records: Mapping[str, Any], *, batch_size: int,
                   max_examples: int = 0) -> dict[str, Any]:
  """`analysis.summarize` of every refinement step over `records` (inputs, labels with PAD
  ignored); a point is one step, its forward passes the head calls so far."""
  import jax
  import numpy as np
  from trm_jax import analysis, losses
  from trm_jax.data import lm

  n = len(records["inputs"]) if not max_examples else min(max_examples, len(records["inputs"]))
  trace = jax.jit(functools.partial(analysis.trajectory, spec=spec))
  sums, last_useful = None, []
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
  points = len(sums["tokens"])
  return analysis.summarize(sums, np.concatenate(last_useful), n, passes_per_point=1,
                            points_per_step=points)


def evaluate_run(run, *, batch_size: int, max_examples: int = 0) -> dict[str, Any]:
  from trm_jax.config import ModelSpec
  from trm_jax.data import lm
  spec = ModelSpec.from_config(run.model_config)
  if spec.scheme != "rlrp" or run.config.data.builder != "rlrp":
    raise ValueError(f"{run.workdir}: lm_eval evaluates RLRP runs (model.scheme and "
                     f"data.builder 'rlrp'); this run has scheme '{spec.scheme}' and builder "
                     f"'{run.config.data.builder}'")
  data = lm.corpora(run.config.data.builder_config)
  arithmetic = evaluate_steps(run.params, spec, lm.answer_only(data.arithmetic_test),
                              batch_size=batch_size, max_examples=max_examples)
  fluency = evaluate_steps(run.params, spec, data.fluency_test, batch_size=batch_size,
                           max_examples=max_examples)
  return {"workdir": str(run.workdir), "step": run.step, "arithmetic": arithmetic,
          "fluency": fluency}


def format_steps(result: Mapping[str, Any]) -> str:
  arith, text = result["arithmetic"]["points"], result["fluency"]["points"]
  lines = [f"| refinement step | answer token acc | answer exact | answer CE | answer margin | "
           "text CE | text perplexity | text margin |", "|---|---|---|---|---|---|---|---|"]
  for a, f in zip(arith, text):
    lines.append(f"| {a['point']} | {a['token_accuracy']:.4f} | {a['exact_accuracy']:.4f} | "
                 f"{a['ce_labels']:.4f} | {a['margin']:+.4f} | {f['ce_labels']:.4f} | "
                 f"{math.exp(f['ce_labels']):.3f} | {f['margin']:+.4f} |")
  lines += ["", f"held-out arithmetic problems: {result['arithmetic']['examples']}; held-out text "
            f"windows: {result['fluency']['examples']} (checkpoint step {result['step']})",
            "margin: the advantage margin of step k over step k-1 (step 0: logits_0 = "
            "lm_head(h + proj(h))), per supervised token; CE in nats (softmax)"]
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  import trm_jax
  options = flags.FLAGS
  run = trm_jax.load(options.workdir, options.step)
  result = evaluate_run(run, batch_size=options.batch_size, max_examples=options.max_examples)
  out = run.workdir / "lm_eval"
  out.mkdir(parents=True, exist_ok=True)
  text = format_steps(result)
  (out / "lm_eval.txt").write_text(text + "\n")
  (out / "lm_eval.json").write_text(json.dumps(result, indent=1))
  print(text)


if __name__ == "__main__":
  _define_flags()
  app.run(main, argv=sys.argv)
