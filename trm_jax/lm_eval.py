r"""Per-refinement-step evaluation of a language-model run (data builder 'lm'; a scheme whose
steps trace their updates, e.g. RLRP's refinements).

    python -m trm_jax.lm_eval --workdir DIR [--split validation|test] [--step N]
        [--max_examples 0] [--baseline DIR]
    python -m trm_jax.lm_eval --candidate NAME=DIR[,DIR...] --candidate NAME=DIR[@STEP]...
        [--select_by exact|gain] [--baseline DIR]

Rebuilds the run's held-out corpora from its config (they are generated / read
deterministically) and reads every refinement step's logits (`Readout.trace`) through
`readouts.trajectory`, so each step k = 1..K is one readout point whose reference is step k-1
(step 0: logits_0, the readout of u_0 = h):
  arithmetic  labels = the answer digits and the EOS after them (`lm.answer_only`): token
              accuracy, answer exact match (teacher-forced; the answer must be followed by EOS,
              so it is the verdict of greedy decoding until EOS, `greedy_decode`), CE and the
              advantage margin between consecutive steps;
  fluency     labels = every next byte of the held-out text windows: CE, perplexity, margin.
`--split` picks the held-out data: `validation` (the default; the run's config must hold out
`num_validation` problems and a `validation_fraction` of the text) or `test`. Choices (a
setting, a default, a protocol) are made on validation; test is read once, for what was chosen.
On the arithmetic it also pairs the readouts problem by problem (McNemar's exact test,
`significance.paired_exact_test`): every step k > 1 against step 1, and with `--baseline DIR`
(another RLRP run with the same held-out problems, e.g. the K = 1 baseline) this run's step K
against the baseline's last step. Those tests are one family: each p-value is reported raw and
Holm-adjusted over the family (`significance.holm`). It splits exact match by operation (+, *)
and the additions by their carries (0, 1, 2, 3 or more).
Writes <workdir>/lm_eval/<split>/{lm_eval.txt, lm_eval.json, lm_eval.png} and prints the
table; the picture: answer exact match per step (all, +, *; the baseline's as a dashed line),
and the answer and text CE per step minus step 1's.

Choosing on validation, then test once (`--candidate`, repeated: a named setting and its runs,
e.g. one per seed; `DIR@STEP` is a run's checkpoint at STEP): every candidate run is evaluated
on validation, the setting with the best mean `--select_by` (`exact`: step K's exact match;
`gain`: step K's minus step 1's) is picked (the first listed on a tie), and only the pick's runs
are evaluated on test. Writes each run's validation and test tables as above and
lm_eval/selection.{json,txt} in the pick's first run.
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
  flags.DEFINE_enum("split", "validation", ["validation", "test"], "the held-out data to "
                    "evaluate on (choose on validation; test once, for the choice)")
  flags.DEFINE_integer("max_examples", 0, "examples per corpus (0: all)")
  flags.DEFINE_integer("batch_size", 256, "examples per batch")
  flags.DEFINE_string("baseline", None, "another RLRP run (or checkpoint) on the same held-out "
                      "arithmetic: its last step is paired with this run's step K")
  flags.DEFINE_multi_string("candidate", [], "NAME=DIR[@STEP][,DIR[@STEP]...]: a setting and "
                            "its runs; with two or more, pick one on validation and evaluate "
                            "only its runs on test (instead of --workdir)")
  flags.DEFINE_enum("select_by", "exact", ["exact", "gain"], "what --candidate picks by, mean "
                    "over a setting's runs on validation: step K's exact match, or step K's "
                    "minus step 1's")
  flags.DEFINE_multi_string("imports", [], "modules to import first (ones that register a "
                            "scheme of your own)")


def evaluate_steps(params, spec, records: Mapping[str, Any], *, batch_size: int,
                   max_examples: int = 0) -> tuple[dict[str, Any], Any]:
  """(`readouts.summarize` of every refinement step over `records` (inputs, labels with PAD
  ignored), a point being one step and its forward passes the head calls so far; the per-row
  exact match [K, n], 0/1)."""
  import jax
  import numpy as np
  from trm_jax import losses, readouts
  from trm_jax.data import lm

  n = len(records["inputs"]) if not max_examples else min(max_examples, len(records["inputs"]))
  trace = jax.jit(functools.partial(readouts.trajectory, spec=spec))
  sums, last_useful, exact = None, [], []
  for start in range(0, n, batch_size):
    rows = np.minimum(np.arange(start, start + batch_size), n - 1)  # the last batch padded
    valid = np.arange(start, start + batch_size) < n
    labels = records["labels"][rows]
    batch = {"inputs": records["inputs"][rows].astype(np.int32),
             "labels": np.where(labels == lm.PAD, losses.IGNORE_LABEL_ID, labels).astype(np.int32),
             "puzzle_identifiers": np.zeros((batch_size,), np.int32)}
    stats = jax.device_get(trace(params, batch))
    batch_sums = {k: (np.asarray(stats[k]) * valid).sum(-1) for k in readouts.POINT_SUMS}
    sums = batch_sums if sums is None else {k: sums[k] + batch_sums[k] for k in sums}
    last_useful.append(readouts.last_useful_point(stats["changed"])[valid])
    exact.append(np.asarray(stats["exact"])[:, valid])
  points = len(sums["tokens"])
  return (readouts.summarize(sums, np.concatenate(last_useful), n, passes_per_point=1,
                             points_per_step=points),
          np.concatenate(exact, axis=1).astype(bool))


def step_logits(params, spec):
  """tokens [N, L] -> every refinement step's logits [K, N, L, V] of an RLRP model (the
  `Readout.trace` that `readouts.trajectory` reads), for `greedy_decode`."""
  import jax.numpy as jnp
  from trm_jax import act
  from trm_jax import model as model_lib

  def logits_fn(tokens):
    batch = {"inputs": tokens.astype(jnp.int32), "labels": tokens.astype(jnp.int32),
             "puzzle_identifiers": jnp.zeros((tokens.shape[0],), jnp.int32)}
    state = act.refresh(spec, act.initial_state(spec, batch), batch)
    rows = model_lib.puzzle_rows(params, batch["puzzle_identifiers"])
    return act.advance(params, rows, spec, state, training=False, record=True)[1].trace
  return logits_fn


def greedy_decode(logits_fn, inputs, prompt_lengths):
  """Greedy decoding until EOS, one decode per readout; jit-friendly (a `fori_loop` over the
  positions, no cache: every position reruns the causal model on the whole row).

  `logits_fn`: tokens [N, L] -> per-readout logits [K, N, L, V] of a causal model.
  `inputs` [B, L]: the prompts, row b's at positions < `prompt_lengths[b]` (the rest is
  ignored). Readout k decodes from its own logits: the token its logits at position t pick is
  the input at t + 1. Returns [K, B, L] in the labels' layout: entry t is the token decoded
  after position t, from t = prompt_length - 1 up to and including the first EOS, PAD
  elsewhere; a decode without EOS by position L - 1 (the last the model reads) is cut there.
  """
  import jax
  import jax.numpy as jnp
  from trm_jax.data import lm

  inputs = jnp.asarray(inputs, jnp.int32)
  prompt_lengths = jnp.asarray(prompt_lengths, jnp.int32)
  B, L = inputs.shape
  K = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct((B, L), jnp.int32)).shape[0]
  prompt = jnp.where(jnp.arange(L)[None] < prompt_lengths[:, None], inputs, lm.PAD)
  start = (jnp.broadcast_to(prompt, (K, B, L)), jnp.full((K, B, L), lm.PAD, jnp.int32),
           jnp.zeros((K, B), bool))

  def body(t, carry):
    tokens, out, done = carry
    logits = logits_fn(tokens.reshape(K * B, L)).reshape(K, K, B, L, -1)
    own = logits[jnp.arange(K), jnp.arange(K), :, t]  # readout k on its own decode: [K, B, V]
    pred = jnp.argmax(own, axis=-1).astype(jnp.int32)
    active = (t >= prompt_lengths - 1)[None] & ~done
    out = out.at[:, :, t].set(jnp.where(active, pred, lm.PAD))
    nxt = jnp.minimum(t + 1, L - 1)
    write = active & (t + 1 < L)
    tokens = tokens.at[:, :, nxt].set(jnp.where(write, pred, tokens[:, :, nxt]))
    return tokens, out, done | (active & (pred == lm.EOS))

  return jax.lax.fori_loop(0, L, body, start)[1]


def prompt_lengths(problems: list[str]):
  """Tokens of each problem's prompt `BOS 123*45=` (what greedy decoding starts from)."""
  import numpy as np
  return np.asarray([problem.index("=") + 2 for problem in problems], np.int32)


def greedy_verdicts(decoded, problems: list[str]):
  """[K, n] bool from `greedy_decode`'s [K, n, L] on `problems` ('123*45=5535'): whether
  readout k's decode is the answer's digits and then EOS (no EOS: wrong)."""
  import numpy as np
  from trm_jax.data import lm
  decoded = np.asarray(decoded)
  out = np.zeros(decoded.shape[:2], bool)
  for b, (problem, start) in enumerate(zip(problems, prompt_lengths(problems))):
    answer = lm.encode(problem.split("=")[1]).tolist()
    for k in range(decoded.shape[0]):
      tokens = decoded[k, b, start - 1:].tolist()
      out[k, b] = lm.EOS in tokens and tokens[:tokens.index(lm.EOS)] == answer
  return out


def _load_checked(run):
  from trm_jax import model as model_lib
  from trm_jax.config import ModelSpec
  from trm_jax.data import lm
  spec = ModelSpec.from_config(run.model_config)
  if run.config.data.builder != lm.BUILDER:
    raise ValueError(f"{run.workdir}: lm_eval evaluates language-model runs (data.builder "
                     f"{lm.BUILDER!r}); this run's builder is '{run.config.data.builder}'")
  if spec.halt_max_steps != 1:
    raise ValueError(f"{run.workdir}: lm_eval reads one supervision step's updates; this run "
                     f"has halt_max_steps = {spec.halt_max_steps}")
  scheme = model_lib.scheme_of(spec)
  needed_by = f"lm_eval of {run.workdir} (it reads every update of the step against the one before)"
  scheme.require("update_trace", needed_by)
  scheme.require("reference_readout", needed_by)
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


def _check_split(run, split: str):
  from trm_jax.data import lm
  config = lm.CorpusConfig.from_config(run.config.data.builder_config)
  if split not in ("validation", "test"):
    raise ValueError(f"split {split!r}: must be 'validation' or 'test'")
  if split == "validation" and not (config.num_validation and config.validation_fraction):
    raise ValueError(
        f"{run.workdir}: its data holds out no validation split (config.data.builder_config."
        f"num_validation = {config.num_validation}, validation_fraction = "
        f"{config.validation_fraction}; both must be > 0, as in experiments/rlrp.py): train "
        "with them, or evaluate --split test (only for what was chosen without the test split)")
  return config


def evaluate_run(run, *, batch_size: int, max_examples: int = 0, baseline=None,
                 split: str = "validation") -> dict[str, Any]:
  """The per-step tables of `run` on its held-out arithmetic and text of `split` ('validation'
  or 'test'), the paired tests of every step k > 1 against step 1 and, given `baseline` (a
  loaded RLRP run), of step K against the baseline's last step on the same problems, each with
  its raw p-value (`p_value`) and its Holm-adjusted one over all of them (`p_holm`; None for
  step 1 against itself, which is no test)."""
  from trm_jax import significance
  from trm_jax.data import lm
  spec = _load_checked(run)
  _check_split(run, split)
  data = lm.corpora(run.config.data.builder_config)
  arithmetic_records, fluency_records = data.split(split)
  problems = lm.answer_only(arithmetic_records)
  arithmetic, exact = evaluate_steps(run.params, spec, problems, batch_size=batch_size,
                                     max_examples=max_examples)
  fluency, _ = evaluate_steps(run.params, spec, fluency_records, batch_size=batch_size,
                              max_examples=max_examples)
  arithmetic["paired_with_step1"] = [significance.paired_exact_test(exact[0], exact[k])
                                     for k in range(len(exact))]
  texts = data.problems[split]
  arithmetic.update(split_exact(texts[:exact.shape[1]], exact))
  result = {"workdir": str(run.workdir), "step": run.step, "split": split,
            "arithmetic": arithmetic, "fluency": fluency}
  if baseline is not None:
    base_spec = _load_checked(baseline)
    base_config = _check_split(baseline, split)
    if lm.arithmetic_problems(base_config)[split] != texts:
      raise ValueError(f"--baseline {baseline.workdir}: its held-out ({split}) arithmetic "
                       f"problems are not those of {run.workdir} (data.builder_config differs), "
                       "so the two runs cannot be paired problem by problem")
    base_problems = lm.answer_only(lm.arithmetic_records(texts, base_config.seq_len))
    _, base_exact = evaluate_steps(baseline.params, base_spec, base_problems,
                                   batch_size=batch_size, max_examples=max_examples)
    result["baseline"] = {"workdir": str(baseline.workdir), "step": baseline.step,
                          "exact_accuracy": float(base_exact[-1].mean()),
                          "steps": int(len(base_exact)),
                          "paired": significance.paired_exact_test(base_exact[-1], exact[-1])}
  # One family: every test this evaluation reports (steps 2..K against step 1, the baseline).
  family = [(f"step {k + 1} vs step 1", pair)
            for k, pair in enumerate(arithmetic["paired_with_step1"]) if k > 0]
  if "baseline" in result:
    family.append((f"step {len(exact)} vs baseline", result["baseline"]["paired"]))
  arithmetic["paired_with_step1"][0]["p_holm"] = None
  for (_, pair), adjusted in zip(family, significance.holm([pair["p_value"] for _, pair in family])):
    pair["p_holm"] = adjusted
  arithmetic["holm_family"] = [name for name, _ in family]
  return result


def parse_candidate(text: str) -> tuple[str, list[tuple[str, int | None]]]:
  """'NAME=DIR[@STEP][,DIR[@STEP]...]' -> (NAME, [(DIR, STEP or None), ...])."""
  name, sep, runs = text.partition("=")
  if not sep or not name or not runs:
    raise ValueError(f"--candidate {text!r}: must be NAME=DIR[@STEP][,DIR[@STEP]...]")
  out = []
  for entry in runs.split(","):
    path, at, step = entry.rpartition("@") if "@" in entry else (entry, "", "")
    if at and not step.isdigit():
      raise ValueError(f"--candidate {text!r}: {entry!r} has a step that is not a number")
    out.append((path, int(step) if at else None))
  return name, out


def select_then_test(candidates, *, load, select_by: str = "exact", batch_size: int,
                     max_examples: int = 0, baseline=None) -> dict[str, Any]:
  """Picks one of `candidates` ([(name, [(dir, step), ...])]) on validation, then evaluates
  only the pick's runs on test. `load(dir, step)` loads a run. The score of a setting is the
  mean over its runs of step K's validation exact match (`select_by` 'exact') or of step K's
  less step 1's ('gain'); the first listed wins a tie. Returns {'select_by', 'candidates':
  [{name, runs, score, validation: [results]}], 'pick', 'test': [results of the pick]}."""
  if select_by not in ("exact", "gain"):
    raise ValueError(f"select_by {select_by!r}: must be 'exact' or 'gain'")
  if len(candidates) < 2:
    raise ValueError("--candidate: give two or more settings to choose between")
  names = [name for name, _ in candidates]
  if len(set(names)) != len(names):
    raise ValueError(f"--candidate: names must differ, got {names}")

  def score(result):
    points = result["arithmetic"]["points"]
    return points[-1]["exact_accuracy"] - (points[0]["exact_accuracy"]
                                            if select_by == "gain" else 0.0)

  table = []
  for name, runs in candidates:
    results = [evaluate_run(load(path, step), batch_size=batch_size, max_examples=max_examples,
                            baseline=baseline, split="validation") for path, step in runs]
    table.append({"name": name, "runs": [f"{path}" + (f"@{step}" if step is not None else "")
                                         for path, step in runs],
                  "score": sum(score(r) for r in results) / len(results),
                  "validation": results})
  pick = max(range(len(table)), key=lambda i: (table[i]["score"], -i))
  test = [evaluate_run(load(path, step), batch_size=batch_size, max_examples=max_examples,
                       baseline=baseline, split="test") for path, step in candidates[pick][1]]
  return {"select_by": select_by, "candidates": table, "pick": table[pick]["name"],
          "test": test}


def format_selection(selection: Mapping[str, Any]) -> str:
  what = {"exact": "step K exact match", "gain": "step K exact match less step 1's"}
  lines = [f"chosen on validation by {what[selection['select_by']]} (mean over a setting's "
           "runs); test read once, for the pick only", "",
           "| setting | runs | validation score | validation exact step 1 -> K |",
           "|---|---|---|---|"]
  for row in selection["candidates"]:
    exacts = ", ".join(f"{r['arithmetic']['points'][0]['exact_accuracy']:.4f} -> "
                       f"{r['arithmetic']['points'][-1]['exact_accuracy']:.4f}"
                       for r in row["validation"])
    mark = " (pick)" if row["name"] == selection["pick"] else ""
    lines.append(f"| {row['name']}{mark} | {len(row['runs'])} | {row['score']:+.4f} | "
                 f"{exacts} |")
  lines += ["", f"test, {selection['pick']}:"]
  for result in selection["test"]:
    points = result["arithmetic"]["points"]
    pair = result["arithmetic"]["paired_with_step1"][-1]
    lines.append(f"  {result['workdir']} (step {result['step']}): exact step 1 -> K "
                 f"{points[0]['exact_accuracy']:.4f} -> {points[-1]['exact_accuracy']:.4f}, "
                 f"step K vs 1 +{pair['fixed']} / -{pair['broken']}, p = {pair['p_value']:.3g}"
                 + (f" (Holm {pair['p_holm']:.3g})" if pair.get("p_holm") is not None else ""))
  return "\n".join(lines)


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
            "p Holm | " + " | ".join(f"exact on {op} ({ops[op]['examples']})" for op in ops)
            + " |", "|---|---|---|---|" + "---|" * len(ops)]
  for k, pair in enumerate(result["arithmetic"]["paired_with_step1"]):
    holm_p = "" if pair.get("p_holm") is None else f"{pair['p_holm']:.3g}"
    raw_p = "" if k == 0 else f"{pair['p_value']:.3g}"
    lines.append(f"| {k + 1} | +{pair['fixed']} / -{pair['broken']} | {raw_p} | {holm_p} | "
                 + " | ".join(f"{ops[op]['exact_accuracy'][k]:.4f}" for op in ops) + " |")
  by_carries = result["arithmetic"]["additions_by_carries"]
  lines += ["", "| additions with carries | problems | "
            + " | ".join(f"exact step {k + 1}" for k in range(len(arith))) + " |",
            "|---|---|" + "---|" * len(arith)]
  for n, part in by_carries.items():
    lines.append(f"| {n} | {part['examples']} | "
                 + " | ".join(f"{x:.4f}" for x in part["exact_accuracy"]) + " |")
  split = result.get("split", "test")
  lines += ["", f"split: {split}; held-out arithmetic problems: "
            f"{result['arithmetic']['examples']}; held-out text windows: "
            f"{result['fluency']['examples']} (checkpoint step {result['step']})",
            "answer exact: the answer digits and then EOS (an answer followed by more digits is "
            "wrong); answer token acc / CE: over the answer digits and that EOS",
            "margin: the advantage margin of step k over step k-1 (step 0: logits_0 = "
            "lm_head(h + proj(h))), per supervised token; CE in nats (softmax)",
            "fixed / broken: problems that step k answers right and step 1 wrong / the reverse; "
            "p: the chance of a split at least this uneven if neither readout were better; "
            "p Holm: adjusted (Holm) over the family of "
            f"{len(result['arithmetic'].get('holm_family', []))} tests reported here"]
  if "baseline" in result:
    base, pair = result["baseline"], result["baseline"]["paired"]
    lines += [f"against the baseline {base['workdir']} (its step {base['steps']}, exact "
              f"{base['exact_accuracy']:.4f}): step {len(arith)} fixes {pair['fixed']} and breaks "
              f"{pair['broken']} of its problems, exact {pair['difference']:+.4f}, "
              f"p = {pair['p_value']:.3g} (Holm {pair['p_holm']:.3g})"]
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
  left.set(xlabel="refinement step",
           ylabel=f"answer exact match ({result.get('split', 'test')})", xticks=steps,
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


def write_result(result: Mapping[str, Any], workdir) -> None:
  """<workdir>/lm_eval/<split>/{lm_eval.txt, lm_eval.json, lm_eval.png}; prints the table."""
  from etils import epath
  out = epath.Path(workdir) / "lm_eval" / result["split"]
  out.mkdir(parents=True, exist_ok=True)
  text = format_steps(result)
  (out / "lm_eval.txt").write_text(text + "\n")
  (out / "lm_eval.json").write_text(json.dumps(result, indent=1))
  plot_steps(result, out / "lm_eval.png")
  print(text)
  print(f"wrote {out}/lm_eval.txt, lm_eval.json and lm_eval.png")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  import importlib
  import trm_jax
  from etils import epath
  from trm_jax import console
  console.quiet_unless_verbose()
  options = flags.FLAGS
  for module in options.imports:
    importlib.import_module(module)
  baseline = trm_jax.load(options.baseline) if options.baseline else None
  if options.candidate:
    if options.workdir:
      raise app.UsageError("--workdir or --candidate, not both")
    candidates = [parse_candidate(text) for text in options.candidate]
    selection = select_then_test(candidates, load=trm_jax.load, select_by=options.select_by,
                                 batch_size=options.batch_size,
                                 max_examples=options.max_examples, baseline=baseline)
    for row in selection["candidates"]:
      for result in row["validation"]:
        write_result(result, result["workdir"])
    for result in selection["test"]:
      write_result(result, result["workdir"])
    out = epath.Path(selection["test"][0]["workdir"]) / "lm_eval"  # the pick's first run
    text = format_selection(selection)
    (out / "selection.txt").write_text(text + "\n")
    (out / "selection.json").write_text(json.dumps(selection, indent=1))
    print(text)
    print(f"wrote {out}/selection.txt and selection.json")
    return
  if not options.workdir:
    raise app.UsageError("give --workdir (one run) or --candidate (two or more settings)")
  run = trm_jax.load(options.workdir, options.step)
  result = evaluate_run(run, batch_size=options.batch_size, max_examples=options.max_examples,
                        baseline=baseline, split=options.split)
  write_result(result, run.workdir)


if __name__ == "__main__":
  _define_flags()
  app.run(main, argv=sys.argv)
