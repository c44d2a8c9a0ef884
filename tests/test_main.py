"""End to end through the CLI's `run`: generate -> build -> train -> evaluate -> table."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from trm_jax import config, experiment, main, model, resume
from trm_jax.config import ModelSpec

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
FIXTURE_ARC = pathlib.Path(__file__).parent / "fixtures" / "arc"


def load_config(name: str, arg: str):
  spec = importlib.util.spec_from_file_location(f"exp_{name}", EXPERIMENTS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def small_smoke_config():
  """The smoke experiment on 4x4 Sudoku (71 generated training puzzles: 7 held out for
  validation, 64 trained on; 16 test puzzles), ,runlocal-sized."""
  cfg = load_config("sudoku", "smoke,runlocal")
  cfg.data.generate.size = 4
  cfg.data.builder_config.size = 4
  cfg.data.builder_config.name = "generated_4x4"
  cfg.data.generate.num_train = 71
  cfg.data.generate.num_test = 16
  return cfg


def test_sudoku_smoke_pipeline_end_to_end(tmp_path, capsys):
  cfg = small_smoke_config()
  cfg.train.profile_steps = (3, 4)
  result = main.run(cfg, str(tmp_path))
  assert result["count"] == 16
  assert result["forward_passes_per_example"] == 4 * 2 * 3  # N_sup * T * (n + 1)
  # Fixed N_sup: the reported accuracy is the one after the last step, a multiple of 1/16
  # (16 puzzles), and the same number in the console table and in metrics.jsonl.
  assert result["exact_accuracy"] == result["exact_accuracy_per_step"][-1]
  assert (result["exact_accuracy"] * 16) == pytest.approx(round(result["exact_accuracy"] * 16))
  out = capsys.readouterr().out
  assert f"exact_accuracy: {result['exact_accuracy']:.4f}" in out and "| 4 |" in out
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  # Periodic evaluations read validation (7 puzzles); test (16) is read once, at the end.
  assert {l["kind"] for l in lines} == {"train", "eval", "test"}
  evals = [l for l in lines if l["kind"] == "eval"]
  assert {l["split"] for l in evals} == {"validation"}
  (test,) = [l for l in lines if l["kind"] == "test"]
  assert test["split"] == "test" and test["step"] == evals[-1]["step"]
  assert test["exact_accuracy"] == pytest.approx(result["exact_accuracy"])
  assert result["split"] == "test" and "test examples: 16" in out
  # The code that produced the numbers: this checkout's commit (or the installed version).
  (provenance,) = [json.loads(l) for l in (tmp_path / "provenance.jsonl").read_text().splitlines()]
  assert provenance["start_step"] == 0 and provenance["jax"]
  assert len(provenance.get("commit", "")) == 40 or provenance.get("version")
  assert json.loads((tmp_path / "config.json").read_text())["model"]["seq_len"] == 16
  assert list((tmp_path / "tb").iterdir())
  assert list((tmp_path / "profile" / "steps_3-4").glob("plugins/profile/*/*.xplane.pb"))


def tiny_arc_config():
  """ARC-1 ,runlocal on the fixture tasks (their test split has several augmentations per
  task), batches of 8 / 16, one H and L cycle, 2 supervision steps."""
  cfg = load_config("arc", "arc1,runlocal")
  cfg.data.manual_dir = str(FIXTURE_ARC)
  cfg.data.builder_config.subsets = ("training", "evaluation")
  cfg.train.global_batch_size = 8
  cfg.eval.global_batch_size = 16
  cfg.model.L_cycles = 1
  cfg.model.H_cycles = 1
  cfg.model.halt_max_steps = 2
  return cfg


def test_arc_runlocal_reports_pass_at_k(tmp_path):
  cfg = tiny_arc_config()
  cfg.train.epochs = 1
  cfg.train.eval_interval = 1
  cfg.eval.max_batches = 0
  result = main.run(cfg, str(tmp_path))
  assert {"pass@1", "pass@2", "pass@1000"} <= set(result)
  # Each pass@K counts a task solved when any of its K most-voted answers is right: it can only
  # grow with K, and stays within the tasks evaluated.
  ks = sorted(int(k.split("@")[1]) for k in result if k.startswith("pass@"))
  values = [result[f"pass@{k}"] for k in ks]
  assert values == sorted(values) and values[-1] <= 1.0


def test_eval_schedule_has_no_near_duplicate_at_the_end():
  is_eval_step = lambda step, every, total: experiment.Schedule(total, every, every).is_eval_step(
      step)
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
  # Its own metric is in the training log, reduced as it declares (per row: one row of the
  # batch changes at most 16 cells of a 4x4 grid).
  assert all(0 <= l["changed_cells"] <= 16 for l in train_lines)
  # And it solves a puzzle given on stdin (the scheme's `group` field is for training only).
  puzzle = "1..." + "." * 12
  proc = subprocess.run([sys.executable, "-m", "trm_jax.solve", "--workdir", str(workdir),
                         "--imports", "one_latent_scheme", "--input", "-"], input=puzzle + "\n",
                        cwd=EXPERIMENTS.parent, capture_output=True, text=True, timeout=600,
                        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(tmp_path)})
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert "scheme one_latent" in proc.stdout and "<stdin>, line 1" in proc.stdout


def test_a_scheme_whose_batch_field_the_dataset_lacks_is_refused_before_compiling():
  import types
  import pytest
  from trm_jax import recursion, schemes
  from trm_jax.schemes.trm import TRM

  @schemes.register
  class NeedsHints(TRM):
    name = "test_needs_hints"
    batch_keys = ("hints",)

  cfg = config.tiny()
  cfg.scheme = "test_needs_hints"
  data = types.SimpleNamespace(train=[{"inputs": 0, "labels": 0, "puzzle_identifier": 0,
                                        "group": 0}])
  with pytest.raises(ValueError, match=r"'scheme' = 'test_needs_hints': the scheme reads batch "
                                       r"field\(s\) \['hints'\], which the dataset's records "
                                       r"do not have \(they have \['group', 'inputs'"):
    experiment.check_batch_keys(ModelSpec.from_config(cfg), data)
  assert isinstance(model.scheme_of(cfg), recursion.Scheme)


def test_batches_that_do_not_split_over_the_mesh_are_refused_naming_the_field():
  import types
  import pytest
  cfg = small_smoke_config()
  eight_devices = types.SimpleNamespace(devices=np.empty((4, 2), object))
  cfg.train.global_batch_size, cfg.eval.global_batch_size = 16, 12
  with pytest.raises(ValueError, match=r"'eval.global_batch_size' = 12: must be a multiple of "
                                       r"the mesh's 8 devices"):
    experiment.check_batches_fit(cfg, eight_devices)
  cfg.train.global_batch_size, cfg.eval.global_batch_size = 20, 16
  with pytest.raises(ValueError, match="'train.global_batch_size' = 20"):
    experiment.check_batches_fit(cfg, eight_devices)
  cfg.train.global_batch_size = 24
  experiment.check_batches_fit(cfg, eight_devices)


def _saved_run(workdir, cfg):
  """A workdir as `main.run` leaves it: config.json (data shapes filled in) and a checkpoint."""
  resolved = json.loads(json.dumps(cfg.to_dict(), default=str))
  resolved["model"].update(seq_len=16, vocab_size=6, num_puzzle_identifiers=3)
  (workdir / "config.json").write_text(json.dumps(resolved))
  (workdir / "checkpoints" / "8" / "state").mkdir(parents=True)


def test_config_changes_on_resume(tmp_path):
  cfg = small_smoke_config()
  checkpoints = tmp_path / "checkpoints"
  assert resume.config_changes_on_resume(cfg, tmp_path, checkpoints, allow=False) == {}
  _saved_run(tmp_path, cfg)
  # The same config (whose model.seq_len etc. the data fills in) is no change.
  assert resume.config_changes_on_resume(cfg, tmp_path, checkpoints, allow=False) == {}
  # Where it runs, on which kernels and how it keeps checkpoints may change freely.
  moved = small_smoke_config()
  moved.mesh_shape = (2, 1)
  moved.execution.matmul = "xla"
  moved.train.keep_checkpoints = 7
  assert resume.config_changes_on_resume(moved, tmp_path, checkpoints, allow=False) == {
      "mesh_shape": ([-1, 1], [2, 1]), "execution.matmul": ("auto", "xla"),
      "train.keep_checkpoints": (3, 7)}
  # A moved workdir moves the data folders that default to it.
  elsewhere = small_smoke_config()
  elsewhere.data.data_dir = "/moved/run/tfds"
  assert resume.config_changes_on_resume(elsewhere, tmp_path, checkpoints, allow=False,
                                       in_workdir=("data.data_dir",)) == {}
  # Where a host keeps its built dataset may change too (the hosts of a pod each have their
  # own, and they check they read the same records): reported, not refused.
  assert resume.config_changes_on_resume(elsewhere, tmp_path, checkpoints, allow=False) == {
      "data.data_dir": ("", "/moved/run/tfds")}
  # What it trains may not, unless allowed; every differing field is named, old -> new.
  changed = small_smoke_config()
  changed.train.lr = 0.5
  changed.data.generate.num_train = 32
  with pytest.raises(resume.ConfigChangeError) as error:
    resume.config_changes_on_resume(changed, tmp_path, checkpoints, allow=False)
  message = str(error.value)
  assert f"train.lr: {cfg.train.lr!r} -> 0.5" in message
  assert "data.generate.num_train: 71 -> 32" in message and "step 8" in message
  assert resume.config_changes_on_resume(changed, tmp_path, checkpoints, allow=True) == {
      "train.lr": (cfg.train.lr, 0.5), "data.generate.num_train": (71, 32)}
  # Without a checkpoint there is nothing to resume, so nothing to refuse.
  assert resume.config_changes_on_resume(changed, tmp_path, tmp_path / "none", allow=False) == {}


def test_a_run_saved_with_the_kernels_in_its_model_config_resumes(tmp_path):
  """Before issue 29 the model config held matmul and attention (config.json and every
  checkpoint): such a run resumes as the same config, its kernels as execution settings that
  may change."""
  cfg = small_smoke_config()
  _saved_run(tmp_path, cfg)
  saved = json.loads((tmp_path / "config.json").read_text())
  execution = saved.pop("execution")
  saved["model"].update(matmul="xla", attention=execution["attention"])
  (tmp_path / "config.json").write_text(json.dumps(saved))
  checkpoints = tmp_path / "checkpoints"
  assert resume.config_changes_on_resume(cfg, tmp_path, checkpoints, allow=False) == {
      "execution.matmul": ("xla", "auto")}
  cfg.execution.matmul = "xla"
  assert resume.config_changes_on_resume(cfg, tmp_path, checkpoints, allow=False) == {}


def test_a_kernel_flag_of_the_model_names_its_new_place(tmp_path):
  """`--config.model.matmul` moved to `--config.execution.matmul` (issue 29): the command line
  says so, without a traceback, before anything runs."""
  for module in ("trm_jax.main", "trm_jax.aot"):
    proc = subprocess.run(
        [sys.executable, "-m", module, "--config", "experiments/sudoku.py:smoke", "--workdir",
         str(tmp_path / "run"), "--topology", "v5e:2x2", "--config.model.matmul=xla"],
        cwd=EXPERIMENTS.parent, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode != 0
    assert ("error: --config.model.matmul moved to --config.execution.matmul"
            in proc.stderr), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
  assert not (tmp_path / "run").exists()


def test_mfu_inputs_count_on_accelerators_only():
  """The FLOP count and peak the training loop's MFU uses (no accelerator needed to check)."""
  import dataclasses
  import functools
  import types

  import jax
  import ml_collections
  from trm_jax import config, flops, train
  from trm_jax.config import ModelSpec

  cfg = config.tiny()
  cfg.compute_dtype = "bfloat16"
  spec = ModelSpec.from_config(cfg)
  train_cfg = ml_collections.ConfigDict(dict(
      lr=1e-3, lr_min_ratio=1.0, lr_warmup_steps=1, beta1=0.9, beta2=0.95, weight_decay=0.1,
      puzzle_emb_lr=1e-2, puzzle_emb_weight_decay=0.1, grad_clip_norm=0.0, ema=False,
      ema_rate=0.999))
  ints = lambda *shape: jax.ShapeDtypeStruct(shape, np.int32)
  batch = {"inputs": ints(4, spec.seq_len), "labels": ints(4, spec.seq_len),
           "puzzle_identifiers": ints(4)}
  state = jax.eval_shape(lambda: train.init_state(cfg, train_cfg, batch, 10, jax.random.key(0)))
  step_flops = flops.model_flops(
      spec, functools.partial(train.train_step, train_cfg=train_cfg, total_steps=10), state, batch)
  assert step_flops > 0
  h200 = types.SimpleNamespace(platform="gpu", device_kind="NVIDIA H200")
  got_flops, peak = main.mfu_inputs(h200, 8, spec, train_cfg, 10, state, batch)
  assert got_flops == step_flops and peak == pytest.approx(8 * 989.4e12)
  fp32 = dataclasses.replace(spec, compute_dtype="float32")  # no fp32 peak in the table
  assert main.mfu_inputs(h200, 8, fp32, train_cfg, 10, state, batch)[1] is None
  cpu = types.SimpleNamespace(platform="cpu", device_kind="cpu")
  assert main.mfu_inputs(cpu, 1, spec, train_cfg, 10, state, batch) == (None, None)
