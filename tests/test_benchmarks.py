"""The benchmark scripts' bookkeeping: the MFU arithmetic, and dis_vs_trm's statistics and
choices on hand-made runs (the scripts themselves run for minutes: not here; the peak table is trm_jax.flops', tested
in test_flops.py)."""

import pathlib
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_trm  # noqa: E402


def test_flop_rates():
  rates = bench_trm.flop_rates(model_flops=6e12, seconds=0.02, peak=1000.0)
  assert rates == pytest.approx({"model_tflop_per_call": 6.0, "tflops_per_s": 300.0,
                                 "peak_tflops": 1000.0, "mfu": 0.3})
  assert bench_trm.flop_rates(1e12, 2.0, None)["mfu"] is None


def test_paired_sign_flip_test_and_bootstrap_by_hand():
  import numpy as np
  import dis_vs_trm
  rng = np.random.default_rng(0)
  a = np.asarray([[1, 1, 1, 0]], float)
  b = np.asarray([[0, 0, 0, 0]], float)
  # Three puzzles differ, all one way: 2 of the 2^3 sign patterns are as extreme (p = 1/4).
  assert dis_vs_trm.paired_permutation_p(a, b, rng) == pytest.approx(0.25, abs=0.01)
  assert dis_vs_trm.paired_permutation_p(a, a, rng) == 1.0
  # One seed, two puzzles (1, 0): resampled means are 0, 1/2, 1 with chances 1/4, 1/2, 1/4.
  assert dis_vs_trm.bootstrap_interval(np.asarray([[1.0, 0.0]]), rng) == (0.0, 1.0)
  assert dis_vs_trm.bootstrap_interval(np.ones((3, 5)), rng) == (1.0, 1.0)


def _fake_run(workdir, validation, test, passes, calls=100.0):
  """A finished run's files as the protocol reads them: per strategy, 0/1 per puzzle."""
  import json
  workdir.mkdir(parents=True)
  def rows(table):
    return [{"strategy": name, "halt": halt, "guidance_w": 1.0, "budget_only": halt == "fixed",
             "max_steps": steps, "forward_passes_per_example": passes[name],
             "examples": {"exact": correct}}
            for (name, halt, steps), correct in table.items()]
  for split, table in (("validation", validation), ("test", test)):
    (workdir / f"analysis_{split}.json").write_text(json.dumps({"strategies": rows(table)}))
  (workdir / "cost.json").write_text(json.dumps({
      "updates": 10, "network_calls_per_training_puzzle": calls, "train_matmul_flops": 1e12,
      "train_loop_seconds": 5.0}))
  return workdir


def test_protocol_chooses_on_validation_and_reports_test(tmp_path):
  import numpy as np
  import dis_vs_trm
  one, all_ = ("w=1, fixed 1 step", "fixed", 1), ("w=1, fixed N_sup", "fixed", 2)
  q = ("w=1, Q-head halting, at most N_sup", "q", 2)
  trm_passes = {one[0]: 21.0, all_[0]: 42.0, q[0]: 30.0}
  dis_passes = {one[0]: 3.0, all_[0]: 6.0}
  runs = {"trm": [], "dis": []}
  for seed in range(2):
    # TRM: on validation, 1 step 2/4, N_sup 3/4, Q 3/4 at fewer passes -> Q is chosen.
    runs["trm"].append(_fake_run(
        tmp_path / f"trm{seed}", {one: [1, 1, 0, 0], all_: [1, 1, 1, 0], q: [1, 1, 1, 0]},
        {one: [0, 0, 0, 0, 0], all_: [1, 1, 1, 1, 1], q: [1, 1, 1, 1, seed]}, trm_passes))
    # DIS: on validation N_sup 2/4 (1 step 0/4): needs TRM's 1 step (21 passes) to match.
    runs["dis"].append(_fake_run(
        tmp_path / f"dis{seed}", {one: [0, 0, 0, 0], all_: [1, 1, 0, 0]},
        {one: [0, 0, 0, 0, 0], all_: [1, 0, 0, 0, 0]}, dis_passes))
  result = dis_vs_trm.evaluate_task("sudoku6", runs, {"trm": "constant", "dis": "cosine"})
  trm, dis = result["methods"]["trm"], result["methods"]["dis"]
  assert trm["strategy_chosen_on_validation"] == q[0]
  assert dis["strategy_chosen_on_validation"] == all_[0]
  assert trm["test"]["exact / all / chosen"]["mean"] == pytest.approx(0.9)  # (5 + 4) / 10
  assert trm["test"]["exact / all / chosen"]["per_seed"] == pytest.approx([0.8, 1.0])
  assert dis["test"]["exact / all / chosen"]["mean"] == pytest.approx(0.2)
  assert dis["test"]["exact / all / plain N_sup"]["passes"] == 6.0
  (pair,) = result["pairs"]
  assert (pair["a"], pair["b"], pair["difference"]) == ("trm", "dis", pytest.approx(0.7))
  # 4 of 5 puzzles favour TRM: p = 2/16 by enumeration (sign flips of 4 nonzero differences,
  # 0.5 and 1 x 3: only all-plus and all-minus reach |3.5|).
  assert pair["p"] == pytest.approx(0.125, abs=0.01) and pair["p_holm"] == pair["p"]
  ratios = {r["family"]: r for r in result["ratios"]}
  assert ratios["fixed steps"]["trm_strategy"] == one[0]
  assert ratios["fixed steps"]["ratio"] == pytest.approx(21.0 / 6.0)
  assert ratios["any"]["trm_strategy"] == one[0]
  assert ratios["Q halting / convergence"]["trm_strategy"] == q[0]
  assert ratios["Q halting / convergence"]["ratio"] == pytest.approx(30.0 / 6.0)
  assert np.isfinite(result["frontier"]["dis"][all_[0]]["accuracy"])


def test_step_anatomy_splits_matmul_flops_by_dtype():
  """A bf16 dot asked for an fp32 output has fp32 x bf16 dots in its backward (the cotangent is
  fp32): what step_anatomy.py reports for the training step."""
  import jax
  import jax.numpy as jnp
  import step_anatomy
  x = jnp.ones((8, 16), jnp.bfloat16)
  w = jnp.ones((16, 4), jnp.bfloat16)
  loss = lambda x, w: jnp.dot(x, w, preferred_element_type=jnp.float32).sum()
  flops = 2 * 8 * 16 * 4
  assert step_anatomy.dot_flops_by_dtype(jax.grad(loss, argnums=(0, 1)), x, w) == {
      "bfloat16 x bfloat16 -> float32": flops, "float32 x bfloat16 -> float32": 2 * flops}
