"""`train.profile_steps`: jax.profiler traces of chosen training steps (trm_jax/profiling.py)."""

import gzip
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import pytest

from trm_jax import experiment, profiling, resume

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"


def sessions(directory: pathlib.Path) -> dict[str, list[pathlib.Path]]:
  return {run.name: sorted((run / "plugins" / "profile").iterdir())
          for run in sorted(directory.iterdir())}


def test_each_run_of_consecutive_steps_is_one_trace_with_its_device_work(tmp_path):
  step_fn = jax.jit(lambda x: jnp.tanh(x @ x))
  x = jnp.ones((64, 64))
  with profiling.StepTracer([2, 3, 5, 9], tmp_path, last_step=6) as tracer:
    for step in range(1, 7):
      tracer.begin(step)
      x = step_fn(x)
      assert tracer.end(step, x) >= 0.0
  runs = sessions(tmp_path)
  assert list(runs) == ["step_5", "steps_2-3"]  # step 9 is past the last step
  for (session,) in runs.values():
    assert list(session.glob("*.xplane.pb")) and list(session.glob("perfetto_trace.json.gz"))
  (session,) = runs["steps_2-3"]
  events = json.load(gzip.open(session / "perfetto_trace.json.gz"))["traceEvents"]
  assert [e["args"]["step_num"] for e in events if e.get("name") == "train"] == ["2", "3"]
  assert any("tanh" in e.get("name", "") for e in events)  # the step's own work is in


def test_a_session_left_open_is_closed_on_exit(tmp_path):
  with pytest.raises(KeyboardInterrupt):
    with profiling.StepTracer([1, 2], tmp_path, last_step=2) as tracer:
      tracer.begin(1)
      raise KeyboardInterrupt
  assert list(sessions(tmp_path)) == ["steps_1-2"]
  with profiling.StepTracer([1], tmp_path / "again", last_step=1) as tracer:  # none open now
    tracer.begin(1)
    tracer.end(1, jnp.zeros(()))


def test_profile_steps_must_be_steps():
  spec = importlib.util.spec_from_file_location("exp_sudoku", EXPERIMENTS / "sudoku.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config("smoke,runlocal")
  assert cfg.train.profile_steps == ()
  experiment.validate_experiment(cfg)
  cfg.train.profile_steps = (3, 4)
  experiment.validate_experiment(cfg)
  for bad in [(0,), (2.5,), (True,)]:
    cfg.train.profile_steps = bad
    with pytest.raises(ValueError, match="train.profile_steps"):
      experiment.validate_experiment(cfg)
  assert "train.profile_steps" in resume.EXECUTION_FIELDS  # a resume may trace other steps
