r"""Training curves of a run, or of several runs overlaid, as PNG files.

    python -m trm_jax.plot --workdir /tmp/smoke                    # -> /tmp/smoke/plots
    python -m trm_jax.plot --workdir runs/a --workdir runs/b --out /tmp/compare

Reads each workdir's metrics.jsonl (trm_jax/metrics.py) and writes:
  curves.png         training loss (lm_loss, log scale) against the training step; exact
                     accuracy against the step: training batches (line) and the held-out set
                     at each evaluation (markers).
  eval_per_step.png  held-out exact accuracy after each supervision step, one curve per
                     evaluation (later evaluations darker), from the eval records'
                     `exact_accuracy_step{k}` fields; not written before the first evaluation.
With several workdirs every curve is drawn once per run, one colour per run, labelled by the
workdir's name. `python -m trm_jax.main` writes <workdir>/plots at the end of a run.
"""

from __future__ import annotations

import argparse
import re
from typing import Any, Sequence

from etils import epath

from trm_jax import metrics as metrics_lib
from trm_jax import paths as paths_lib

_STEP_KEY = re.compile(r"^exact_accuracy_step(\d+)$")


def run_labels(workdirs: Sequence[paths_lib.PathLike]) -> list[str]:
  """Each workdir's name, or its whole path where two runs share a name."""
  names = [paths_lib.absolute(w).name for w in workdirs]
  return [name if names.count(name) == 1 else str(paths_lib.absolute(w))
          for name, w in zip(names, workdirs)]


def per_step_accuracy(record: dict[str, Any]) -> list[float]:
  """An eval record's exact accuracy after supervision steps 1, 2, ... (in step order)."""
  steps = sorted((int(m.group(1)), value) for key, value in record.items()
                 if (m := _STEP_KEY.match(key)))
  return [value for _, value in steps]


def plot_runs(workdirs: Sequence[paths_lib.PathLike], out: paths_lib.PathLike
              ) -> list[epath.Path]:
  """Writes curves.png (and eval_per_step.png once a run has evaluated) into `out`; returns the
  paths written."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker

  workdirs = [epath.Path(w) for w in workdirs]
  runs = []
  for label, workdir in zip(run_labels(workdirs), workdirs):
    records = metrics_lib.read(workdir)
    train = [r for r in records if r["kind"] == "train"]
    evals = [r for r in records if r["kind"] == "eval"]
    tests = [r for r in records if r["kind"] == "test"]  # read once, after training
    if not train and not evals:
      raise ValueError(f"{workdir / metrics_lib.METRICS_FILE}: no train or eval records yet")
    runs.append((label, train, evals, tests))
  out = epath.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  several = len(runs) > 1
  paths = []

  fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
  for i, (label, train, evals, tests) in enumerate(runs):
    colour = colours[i % len(colours)]
    prefix = f"{label}: " if several else ""
    losses = [(r["step"], r["lm_loss"]) for r in train if "lm_loss" in r]
    marker = "." if len(train) < 3 else None  # a line of one point draws nothing
    if losses:
      loss_ax.plot(*zip(*losses), color=colour, lw=1.2, marker=marker,
                   label=label if several else None)
    if train:
      acc_ax.plot([r["step"] for r in train], [r["exact_accuracy"] for r in train],
                  color=colour, lw=1.2, marker=marker, label=f"{prefix}training batches")
    if evals:
      acc_ax.plot([r["step"] for r in evals], [r["exact_accuracy"] for r in evals], "o--",
                  color=colour, ms=5, lw=0.8, label=f"{prefix}{split_of(evals)}")
    if tests:
      acc_ax.plot([r["step"] for r in tests], [r["exact_accuracy"] for r in tests], "*",
                  color=colour, ms=10, label=f"{prefix}test (read once)")
  loss_ax.set(title="training loss (lm_loss)", xlabel="training step", ylabel="loss")
  if all(value > 0 for line in loss_ax.get_lines() for value in line.get_ydata()):
    loss_ax.set_yscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda value, _: f"{value:g}")
    loss_ax.yaxis.set_major_formatter(plain)
    loss_ax.yaxis.set_minor_formatter(plain)
  acc_ax.set(title="exact accuracy", xlabel="training step", ylabel="exact accuracy",
             ylim=(-0.02, 1.02))
  for ax in (loss_ax, acc_ax):
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
  fig.tight_layout()
  paths.append(out / "curves.png")
  save_figure(fig, paths[-1])
  plt.close(fig)

  evaluated = [(label, [r for r in evals if per_step_accuracy(r)])
               for label, _, evals, _ in runs]
  if any(evals for _, evals in evaluated):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, evals) in enumerate(evaluated):
      for j, record in enumerate(evals):
        accuracy = per_step_accuracy(record)
        shade = (j + 1) / len(evals)  # later evaluations darker
        if several:
          colour, alpha = colours[i % len(colours)], 0.25 + 0.75 * shade
          name = f"{label}: step {record['step']}"
        else:
          colour, alpha = plt.get_cmap("viridis")(0.85 * (1 - shade)), 1.0
          name = f"step {record['step']}"
        ax.plot(range(1, len(accuracy) + 1), accuracy, "o-", color=colour, alpha=alpha, ms=4,
                lw=1.2, label=name)
    splits = sorted({split_of(evals) for _, evals in evaluated if evals})
    ax.set(title=f"{' / '.join(splits)} exact accuracy per supervision step, at each evaluation",
           xlabel="supervision step", ylabel="exact accuracy", ylim=(-0.02, 1.02))
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, title="evaluation at training step" if not several else None)
    fig.tight_layout()
    paths.append(out / "eval_per_step.png")
    save_figure(fig, paths[-1])
    plt.close(fig)
  return paths


def split_of(evals: Sequence[dict]) -> str:
  """The split periodic evaluations read (records before splits were recorded: 'held-out')."""
  return evals[-1].get("split", "held-out")


def save_figure(fig, path: epath.Path, dpi: int = 120) -> None:
  """`fig` as a PNG at `path` (local or gs://: matplotlib writes into the opened file)."""
  with path.open("wb") as f:
    fig.savefig(f, format="png", dpi=dpi)


def main(argv: Sequence[str] | None = None) -> None:
  # argparse, not absl flags: trm_jax.main imports this module and has its own --workdir.
  parser = argparse.ArgumentParser(prog="python -m trm_jax.plot", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", action="append", required=True,
                      help="a run directory (repeat to overlay runs)")
  parser.add_argument("--out", help="output directory (default <workdir>/plots; required with "
                      "several workdirs)")
  args = parser.parse_args(argv)
  workdirs = [epath.Path(w) for w in args.workdir]
  if len(workdirs) > 1 and not args.out:
    parser.error("--out is required with several --workdir (it is where the overlay goes)")
  out = epath.Path(args.out) if args.out else workdirs[0] / "plots"
  paths = plot_runs(workdirs, out)
  print("wrote " + ", ".join(str(p) for p in paths))
  if not any(p.name == "eval_per_step.png" for p in paths):
    print("no evaluation yet: eval_per_step.png is written once a run has evaluated")


if __name__ == "__main__":
  main()
