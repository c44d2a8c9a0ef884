"""`python -m trm_jax.plot`: PNGs of a run's curves from its metrics.jsonl, and of runs overlaid."""

import json
import subprocess
import sys

import numpy as np
import pytest

from trm_jax import plot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _fake_run(workdir, seed, evals=(50, 100)):
  """A hand-written metrics.jsonl: train records every 10 steps, eval records with 4
  supervision steps' exact accuracies."""
  rng = np.random.default_rng(seed)
  workdir.mkdir(parents=True)
  lines = []
  for step in range(10, 101, 10):
    lines.append({"step": step, "kind": "train", "lm_loss": 2.0 / step ** 0.5,
                  "exact_accuracy": step / 120, "steps_per_s": 3.0})
    if step in evals:
      per_step = np.sort(rng.uniform(0, step / 100, size=4))
      lines.append({"step": step, "kind": "eval", "exact_accuracy": float(per_step[-1]),
                    "seconds": 1.5, **{f"exact_accuracy_step{k + 1}": float(v)
                                        for k, v in enumerate(per_step)}})
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(l) + "\n" for l in lines))
  return workdir


def _is_png(path):
  data = path.read_bytes()
  return data.startswith(PNG_SIGNATURE) and len(data) > 5000


def test_one_run_writes_both_pngs(tmp_path):
  run = _fake_run(tmp_path / "run", seed=0)
  paths = plot.plot_runs([run], run / "plots")
  assert [p.name for p in paths] == ["curves.png", "eval_per_step.png"]
  assert all(_is_png(p) for p in paths)


def test_runs_overlaid_through_the_cli(tmp_path):
  a, b = _fake_run(tmp_path / "a", seed=0), _fake_run(tmp_path / "b", seed=1, evals=(100,))
  out = tmp_path / "compare"
  proc = subprocess.run([sys.executable, "-m", "trm_jax.plot", "--workdir", str(a),
                         "--workdir", str(b), "--out", str(out)], capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert _is_png(out / "curves.png") and _is_png(out / "eval_per_step.png")
  # Several runs need --out (where would the overlay go otherwise?).
  proc = subprocess.run([sys.executable, "-m", "trm_jax.plot", "--workdir", str(a),
                         "--workdir", str(b)], capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0 and "--out is required" in proc.stderr


def test_before_the_first_evaluation_only_the_curves(tmp_path):
  run = _fake_run(tmp_path / "run", seed=0, evals=())
  assert [p.name for p in plot.plot_runs([run], tmp_path / "out")] == ["curves.png"]


def test_labels_and_per_step_accuracy():
  assert plot.run_labels(["/x/a", "/y/b"]) == ["a", "b"]
  assert plot.run_labels(["/x/run", "/y/run"]) == ["/x/run", "/y/run"]
  record = {"exact_accuracy_step10": 0.9, "exact_accuracy_step2": 0.2,
            "exact_accuracy_step1": 0.1, "exact_accuracy": 0.9}
  assert plot.per_step_accuracy(record)[:2] == [0.1, 0.2]
  assert plot.per_step_accuracy(record)[-1] == 0.9


def test_an_empty_metrics_file_is_an_error(tmp_path):
  (tmp_path / "metrics.jsonl").write_text("")
  with pytest.raises(ValueError, match="no train or eval records"):
    plot.plot_runs([tmp_path], tmp_path / "plots")
