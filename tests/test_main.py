"""End to end through the CLI's `run`: generate -> build -> train -> evaluate -> table."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np

from trm_jax import main

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
FIXTURE_ARC = pathlib.Path(__file__).parent / "fixtures" / "arc"


def load_config(name: str, arg: str):
  spec = importlib.util.spec_from_file_location(f"exp_{name}", EXPERIMENTS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def small_smoke_config():
  """The smoke experiment on 4x4 Sudoku (64 train / 16 test puzzles), ,runlocal-sized."""
  cfg = load_config("sudoku", "smoke,runlocal")
  cfg.data.generate.size = 4
  cfg.data.builder_config.size = 4
  cfg.data.builder_config.name = "generated_4x4"
  cfg.data.generate.num_train = 64
  cfg.data.generate.num_test = 16
  return cfg


def test_sudoku_smoke_pipeline_end_to_end(tmp_path, capsys):
  cfg = small_smoke_config()
  result = main.run(cfg, str(tmp_path))
  assert 0.0 <= result["exact_accuracy"] <= 1.0 and result["count"] == 16
  assert result["forward_passes_per_example"] == 4 * 2 * 3  # N_sup * T * (n + 1)
  out = capsys.readouterr().out
  assert "exact_accuracy:" in out and "| 4 |" in out
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert {l["kind"] for l in lines} == {"train", "eval"}
  assert json.loads((tmp_path / "config.json").read_text())["model"]["seq_len"] == 16
  assert list((tmp_path / "tb").iterdir())


def test_arc_runlocal_reports_pass_at_k(tmp_path):
  cfg = load_config("arc", "arc1,runlocal")
  cfg.data.manual_dir = str(FIXTURE_ARC)
  cfg.data.builder_config.subsets = ("training", "evaluation")
  cfg.train.epochs = 1
  cfg.train.eval_interval = 1
  cfg.train.global_batch_size = 8
  cfg.eval.global_batch_size = 16
  cfg.eval.max_batches = 0
  cfg.model.L_cycles = 1
  cfg.model.H_cycles = 1
  cfg.model.halt_max_steps = 2
  result = main.run(cfg, str(tmp_path))
  assert {"pass@1", "pass@2", "pass@1000"} <= set(result)
  assert all(0.0 <= result[k] <= 1.0 for k in result if k.startswith("pass@"))


def test_eval_schedule_has_no_near_duplicate_at_the_end():
  from trm_jax.main import is_eval_step
  # 10 intervals of 39 steps, 392 steps in all (steps per epoch rounded): no eval at 390.
  evals = [s for s in range(1, 393) if is_eval_step(s, 39, 392)]
  assert evals == [39 * k for k in range(1, 10)] + [392]
  # An exact multiple: the last periodic evaluation is the final one.
  assert [s for s in range(1, 41) if is_eval_step(s, 10, 40)] == [10, 20, 30, 40]
  # A last stretch longer than half an interval keeps its periodic evaluation.
  assert [s for s in range(1, 26) if is_eval_step(s, 10, 25)] == [10, 20, 25]


def _readme_scheme_example() -> str:
  """The complete scheme example of README.md ("Writing a new recursion scheme"), verbatim."""
  text = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
  section = text[text.index("## Writing a new recursion scheme"):]
  blocks = section.split("```python\n")[1:]
  example = next(b.split("```")[0] for b in blocks if "class OneLatent" in b)
  return example


def test_the_readme_scheme_example_trains_through_the_cli(tmp_path):
  """A user's scheme lives in their own module; the experiment config (a Python file) imports
  it, which registers it, and `python -m trm_jax.main` trains, evaluates and checkpoints it."""
  (tmp_path / "one_latent_scheme.py").write_text(_readme_scheme_example())
  (tmp_path / "one_latent_config.py").write_text(textwrap.dedent(f"""
      import sys
      sys.path[:0] = [{str(tmp_path)!r}, {str(EXPERIMENTS)!r}]
      import one_latent_scheme  # registers "one_latent"
      import sudoku

      def get_config(arg=None):
        config = sudoku.get_config("smoke,runlocal")
        config.model.scheme = "one_latent"
        config.data.generate.size = config.data.builder_config.size = 4
        config.data.builder_config.name = "generated_4x4"
        config.data.generate.num_train, config.data.generate.num_test = 64, 16
        config.train.max_steps, config.train.log_every_steps = 2, 1
        return config
      """))
  workdir = tmp_path / "work"
  proc = subprocess.run([sys.executable, "-m", "trm_jax.main", "--config",
                         str(tmp_path / "one_latent_config.py"), "--workdir", str(workdir)],
                        cwd=EXPERIMENTS.parent, capture_output=True, text=True, timeout=600,
                        env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert proc.returncode == 0, proc.stderr[-4000:]
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_lines = [l for l in lines if l["kind"] == "train"]
  assert len(train_lines) == 2 and all(np.isfinite(l["lm_loss"]) for l in train_lines)
  evals = [l for l in lines if l["kind"] == "eval"]
  assert evals and evals[-1]["forward_passes_per_example"] == 4 * 2  # N_sup * n
  assert "2" in [p.name for p in (workdir / "checkpoints").iterdir()]
  # The analysis runs on it too (the scheme records its readouts and gives answer_logits).
  proc = subprocess.run([sys.executable, "-m", "trm_jax.analyze", "--workdir", str(workdir),
                         "--imports", "one_latent_scheme", "--max_examples", "8",
                         "--guidance_ws", "2", "--converge_ks", "1"],
                        cwd=EXPERIMENTS.parent, capture_output=True, text=True, timeout=600,
                        env={**os.environ, "JAX_PLATFORMS": "cpu",
                             "PYTHONPATH": str(tmp_path)})
  assert proc.returncode == 0, proc.stderr[-4000:]
  summary = json.loads((workdir / "analysis" / "analysis.json").read_text())
  assert len(summary["points"]) == 4 * 2  # N_sup * n readout points


def test_batches_that_do_not_split_over_the_mesh_are_refused_naming_the_field():
  import types
  import pytest
  cfg = small_smoke_config()
  eight_devices = types.SimpleNamespace(devices=np.empty((4, 2), object))
  cfg.train.global_batch_size, cfg.eval.global_batch_size = 16, 12
  with pytest.raises(ValueError, match=r"'eval.global_batch_size' = 12: must be a multiple of "
                                       r"the mesh's 8 devices"):
    main.check_batches_fit(cfg, eight_devices)
  cfg.train.global_batch_size, cfg.eval.global_batch_size = 20, 16
  with pytest.raises(ValueError, match="'train.global_batch_size' = 20"):
    main.check_batches_fit(cfg, eight_devices)
  cfg.train.global_batch_size = 24
  main.check_batches_fit(cfg, eight_devices)
