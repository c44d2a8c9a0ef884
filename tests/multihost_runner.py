"""`python -m trm_jax.main` for one process of tests/test_multihost.py, with a fault injected here:

  TRM_TEST_UNREADABLE_STEP=N  Orbax fails to read checkpoint step N on this process only
  TRM_TEST_RAISE_AT_STEP=N    raises RuntimeError once training step N is done
  TRM_TEST_KILL_AT_STEP=N     SIGKILLs itself once training step N is done

Prints "fault at <unix time>" (flushed) just before a raise or kill, so the test can time how
long the other process takes to stop.
"""

import os
import signal
import sys
import time

from absl import app
from etils import epath
from orbax.checkpoint import v1 as ocp
from orbax.checkpoint.experimental.v1._src.loading import loading

from trm_jax import checkpoint as checkpoint_lib
from trm_jax import main as trm_main


def _fail_to_load(step: str):
  """Orbax's load of one step directory fails; both of its names are replaced (the public one,
  and the one its training.Checkpointer calls), whichever trm_jax loads through."""
  load = loading.load_checkpointables

  def failing(path, *args, **kwargs):
    if epath.Path(path).name == step:
      raise ValueError(f"simulated: checkpoint step {step} is unreadable on this host")
    return load(path, *args, **kwargs)
  ocp.load_checkpointables = loading.load_checkpointables = failing


def _fault_after_step(step: int, fault):
  maybe_save = checkpoint_lib.CheckpointManager.maybe_save

  def faulty(self, at_step, *args, **kwargs):
    if at_step == step:
      print(f"fault at {time.time()}", flush=True)
      fault()
    return maybe_save(self, at_step, *args, **kwargs)
  checkpoint_lib.CheckpointManager.maybe_save = faulty


def _raise():
  raise RuntimeError("simulated failure on this host")


if __name__ == "__main__":
  if "TRM_TEST_UNREADABLE_STEP" in os.environ:
    _fail_to_load(os.environ["TRM_TEST_UNREADABLE_STEP"])
  if "TRM_TEST_RAISE_AT_STEP" in os.environ:
    _fault_after_step(int(os.environ["TRM_TEST_RAISE_AT_STEP"]), _raise)
  if "TRM_TEST_KILL_AT_STEP" in os.environ:
    _fault_after_step(int(os.environ["TRM_TEST_KILL_AT_STEP"]),
                      lambda: os.kill(os.getpid(), signal.SIGKILL))
  sys.argv[0] = trm_main.__file__
  app.run(trm_main.main)
