"""End to end through the CLI's `run`: generate -> build -> train -> evaluate -> table."""

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trm_jax import losses, main, recursion
from trm_jax import model as model_lib

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
FIXTURE_ARC = pathlib.Path(__file__).parent / "fixtures" / "arc"


def load_config(name: str, arg: str):
  spec = importlib.util.spec_from_file_location(f"exp_{name}", EXPERIMENTS / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_sudoku_smoke_pipeline_end_to_end(tmp_path, capsys):
  cfg = load_config("sudoku", "smoke,runlocal")
  cfg.data.generate.size = 4
  cfg.data.builder_config.size = 4
  cfg.data.builder_config.name = "generated_4x4"
  cfg.data.generate.num_train = 64
  cfg.data.generate.num_test = 16
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


class _OneLatent(recursion.Scheme):
  """A scheme written here against the contract alone: one latent refined n times per step
  from the input embedding, plain softmax CE on the labels, fixed N_sup steps."""

  name = "test_one_latent"

  def initial_carry(self, spec, batch_size):
    return {"y": jnp.zeros((batch_size, spec.total_len, spec.hidden_size), spec.jnp_compute_dtype)}

  def step(self, params, rows, spec, carry, data, t, rng, *, training, record=False):
    module = model_lib.merge(spec, params)
    y = jnp.where(carry["reset"][:, None, None], params["y_init"].astype(carry["y"].dtype),
                  carry["y"])
    x = module.embed(data["inputs"], rows)
    net = model_lib.net_fn(spec)
    for _ in range(spec.L_cycles):
      y = net(params["net"], y, x)
    logits, q_halt, q_continue = module.heads(y)
    return {"y": jax.lax.stop_gradient(y)}, recursion.Readout(logits, q_halt, q_continue)

  def loss(self, spec, readout, targets, carry, data, halted):
    mask, correct, exact, counts = losses.sequence_correctness(readout.logits, targets)
    token = losses.softmax_cross_entropy(readout.logits, targets, mask)
    loss = jnp.sum(token / jnp.maximum(counts, 1)[:, None])
    valid = halted & (counts > 0)
    return loss, {"count": valid.sum().astype(jnp.float32), "lm_loss": loss,
                  "exact_accuracy": (valid & exact).sum().astype(jnp.float32)}

  def forward_passes(self, spec):
    return spec.L_cycles


def test_a_scheme_defined_in_a_test_trains_through_the_entry_point(tmp_path):
  recursion.register(_OneLatent())
  cfg = load_config("sudoku", "smoke,runlocal")
  cfg.model.scheme = "test_one_latent"
  cfg.data.generate.size = 4
  cfg.data.builder_config.size = 4
  cfg.data.builder_config.name = "generated_4x4"
  cfg.data.generate.num_train = 64
  cfg.data.generate.num_test = 16
  result = main.run(cfg, str(tmp_path))
  assert result["count"] == 16
  assert result["forward_passes_per_example"] == 4 * 2  # N_sup * n
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train_lines = [l for l in lines if l["kind"] == "train"]
  assert train_lines and all(np.isfinite(l["lm_loss"]) for l in train_lines)
  assert (tmp_path / "checkpoints").is_dir()
