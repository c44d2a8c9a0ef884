"""Sweeps: declaration (axis, product, zip_), expansion into named runs, checks before launch."""

import pathlib
import textwrap

import pytest

from trm_jax import sweep

ROOT = pathlib.Path(__file__).resolve().parents[1]
SUDOKU = "experiments/sudoku.py"


def test_product_and_zip():
  grid = sweep.product(sweep.axis("train.lr", [1e-3, 3e-3]), sweep.axis("train.seed", [0, 1, 2]))
  assert grid == [{"train.lr": lr, "train.seed": s} for lr in (1e-3, 3e-3) for s in (0, 1, 2)]
  paired = sweep.zip_(sweep.axis("model.H_cycles", [2, 3]), sweep.axis("model.L_cycles", [4, 6]))
  assert paired == [{"model.H_cycles": 2, "model.L_cycles": 4},
                    {"model.H_cycles": 3, "model.L_cycles": 6}]
  nested = sweep.product(sweep.axis("config", ["smoke"]), paired)
  assert nested[1] == {"config": "smoke", "model.H_cycles": 3, "model.L_cycles": 6}
  with pytest.raises(ValueError, match="different lengths"):
    sweep.zip_(sweep.axis("a", [1, 2]), sweep.axis("b", [1]))
  with pytest.raises(ValueError, match="'train.lr' is set twice"):
    sweep.product(sweep.axis("train.lr", [1.0]), sweep.axis("train.lr", [2.0]))
  with pytest.raises(ValueError, match="'train.lr' has no values"):
    sweep.axis("train.lr", [])


def test_2x3_sweep_expands_to_6_named_runs(monkeypatch):
  monkeypatch.chdir(ROOT)
  name, runs, runlocal = sweep.sweep_of(SUDOKU, "smoke")
  assert (name, runlocal) == ("smoke", False)
  expanded = sweep.expand(SUDOKU, name, runs, "runs/", common_flags=["--config.train.max_steps=3"])
  assert [r.name for r in expanded] == [f"lr={lr},seed={s}" for lr in ("0.001", "0.003")
                                        for s in (0, 1, 2)]
  assert len({r.workdir for r in expanded}) == 6
  assert expanded[4].workdir == "runs/smoke/lr=0.003,seed=1"
  assert expanded[4].config == "experiments/sudoku.py:smoke"
  assert expanded[4].flags == ("--config.train.lr=0.003", "--config.train.seed=1",
                               "--config.train.max_steps=3")
  assert expanded[4].argv("python") == [
      "python", "-m", "trm_jax.main", "--config", "experiments/sudoku.py:smoke", "--workdir",
      "runs/smoke/lr=0.003,seed=1", "--config.train.lr=0.003", "--config.train.seed=1",
      "--config.train.max_steps=3"]
  for run in expanded:  # every run's flags parse and validate as trm_jax.main will
    config = sweep.check(run)
    assert config.train.lr == dict(run.overrides)["train.lr"]
    assert config.train.seed == dict(run.overrides)["train.seed"] and config.train.max_steps == 3


def test_names_and_runlocal():
  runs = sweep.product(sweep.axis("config", ["smoke", "dis_smoke"]),
                       sweep.zip_(sweep.axis("train.seed", [0, 1]),
                                  sweep.axis("eval.seed", [1, 0])),
                       sweep.axis("model.L_cycles", [1]), sweep.axis("mesh_shape", [(-1, 1)]))
  # (TFDS data cannot live in the bucket: a local data_dir for every run.)
  expanded = sweep.expand(SUDOKU, "s", runs, "gs://bucket/runs", runlocal=True,
                          common_flags=["--config.data.data_dir=/data/tfds"])
  # Only what differs between runs names them; a key whose last part is ambiguous stays whole.
  assert [r.name for r in expanded] == [
      "config=smoke,train.seed=0,eval.seed=1", "config=smoke,train.seed=1,eval.seed=0",
      "config=dis_smoke,train.seed=0,eval.seed=1", "config=dis_smoke,train.seed=1,eval.seed=0"]
  assert expanded[2].config == "experiments/sudoku.py:dis_smoke,runlocal"
  assert expanded[2].workdir == "gs://bucket/runs/s/config=dis_smoke,train.seed=0,eval.seed=1"
  assert expanded[0].flags == ("--config.train.seed=0", "--config.eval.seed=1",
                               "--config.model.L_cycles=1", "--config.mesh_shape=(-1, 1)",
                               "--config.data.data_dir=/data/tfds")
  for run in expanded:
    config = sweep.check(run)
    assert config.mesh_shape == (-1, 1) and config.model.L_cycles == 1
    assert config.train.max_steps == 20  # runlocal's
  assert sweep.sweep_of(SUDOKU, "schemes,runlocal")[2]
  lone = sweep.expand(SUDOKU, "one", [{"train.lr": 0.01}], "r")
  assert lone[0].name == "lr=0.01"
  with pytest.raises(ValueError, match="runs 0 and 1 are the same run"):
    sweep.expand(SUDOKU, "dup", [{"train.lr": 0.01}, {"train.lr": 0.01}], "r")


def test_every_declared_sweep_checks():
  for path in ("experiments/sudoku.py", "experiments/arc.py"):
    module = sweep.load_experiment(ROOT / path)
    for sweep_name in module.SWEEPS:
      name, runs, _ = sweep.sweep_of(ROOT / path, sweep_name)
      for run in sweep.expand(str(ROOT / path), name, runs, "/r"):
        sweep.check(run)


def _one_run(overrides, config=SUDOKU):
  return sweep.expand(str(ROOT / config), "s", [overrides], "/r")[0]


@pytest.mark.parametrize("overrides,message", [
    ({"config": "smoke", "train.lrr": 1.0},
     "unknown override key 'train.lrr': 'train' has no field 'lrr'"),
    ({"config": "smoke", "modle.hidden_size": 8},
     "unknown override key 'modle.hidden_size': the config has no field 'modle'"),
    ({"config": "smoke", "train.lr": "fast"},
     "flag --config.train.lr=fast: could not convert string to float"),
    ({"config": "smoke", "train.max_steps": 1.5}, "flag --config.train.max_steps=1.5"),
    ({"config": "smoke", "train.max_steps": "3"},
     r"override 'train.max_steps' = '3' \(str\) does not match the config field's type int"),
    ({"config": "smoke", "train.ema": 1},
     r"override 'train.ema' = 1 \(int\) does not match the config field's type bool"),
    ({"config": "smoke", "model.hidden_size": -4},
     "model config field 'hidden_size' = -4: must be a positive integer"),
    ({"config": "smoke", "train.optimizer": "sgd"}, "config field 'train.optimizer' = 'sgd'"),
    ({"config": "smokey"}, "unknown config variant 'smokey'"),
])
def test_bad_override_fails_naming_it(overrides, message):
  run = _one_run(overrides)
  with pytest.raises(ValueError, match=message) as error:
    sweep.check(run)
  assert f"run {run.name!r}" in str(error.value)


def test_bad_common_flag_and_missing_sweeps(tmp_path):
  run = sweep.expand(SUDOKU, "s", [{"config": "smoke"}], "/r",
                     common_flags=["--config.data.manual_dirr=/x"])[0]
  with pytest.raises(ValueError, match="unknown override key 'data.manual_dirr'"):
    sweep.check(run)
  with pytest.raises(ValueError, match="expected --config.KEY=VALUE"):
    sweep.expand(SUDOKU, "s", [{"config": "smoke"}], "/r", common_flags=["--workdir=/x"])
  with pytest.raises(ValueError, match="maze.py has no get_sweep"):
    sweep.sweep_of(ROOT / "experiments/maze.py", "smoke")
  with pytest.raises(ValueError, match=r"unknown sweep 'nope'; choose one of \['cycles'"):
    sweep.sweep_of(ROOT / SUDOKU, "nope")
  bad = tmp_path / "bad.py"
  bad.write_text(textwrap.dedent("""
      def get_config(arg=None):
        return None
      def get_sweep(name):
        return {"train.lr": 1.0}
      """))
  with pytest.raises(ValueError, match="must return a non-empty list of dicts"):
    sweep.sweep_of(bad, "x")
