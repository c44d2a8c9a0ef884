"""Multi-process runs: a host that fails stops all of them within seconds, and process 0 says why.

A run on a pod is one process per host, joined in collectives. When one process raises, the
others block in their next collective; left alone, they wait for the coordination service to
notice (its shutdown barrier or the failed process's missing heartbeats: minutes), and process 0
(the console people watch) then prints a barrier error rather than the cause.

`failures_stop_all()` wraps what a process runs. A process that raises publishes "host <index>
(<hostname>) failed: <error>" in the coordination service's key-value store; a watcher thread
on every process polls for such lines about once a second, logs them and ends its process
(`os._exit`: a thread blocked in a collective cannot be unwound). Before ending, a process waits
(at most `_ANSWER_S`) until every other process has either failed too or seen the failure, so
that none is ended by the coordination service going away (it lives in process 0) before it has
read why; a host that never answers is named as such (killed, crashed or stuck). A host killed
outright publishes nothing: where the others' collectives then fail (a closed connection), they
leave as above, naming it as the host that did not answer; where their collectives wait on
(a host gone with its network), the coordination service ends them once it has missed the host's
heartbeats for `HEARTBEAT_TIMEOUT_S`, its message naming the task.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from typing import Any, Callable, Iterator, TypeVar

import jax
import numpy as np
from absl import logging

T = TypeVar("T")

# The coordination service ends every process once one has sent no heartbeat for this long
# (JAX's default is 100 s). Measured on CPU with two processes: the other ends 17 to 28 s after
# one is SIGSTOPped or SIGKILLed (5 s with a timeout of 5 s). Lower would also end a run whose
# host only stalls (swapping, a network hiccup) for that long.
HEARTBEAT_TIMEOUT_S = 30

_PREFIX = "trm_jax/"
_POLL_S = 1.0  # how often each process's watcher looks for failures of the others
_ANSWER_S = 5.0  # how long a leaving process waits for the others to have seen why

# One exit sequence per process: the main thread's (its own failure) or the watcher's.
_leaving = threading.Lock()


@contextlib.contextmanager
def failures_stop_all() -> Iterator[None]:
  """Runs the block so that a failure of any process ends all of them within seconds, with
  process 0 logging which host failed and its error. Does nothing on a single process."""
  if jax.process_count() == 1:
    yield
    return
  from jax._src import distributed  # the coordination service's client: no public handle
  client = distributed.global_state.client
  me = jax.process_index()
  client.key_value_set(f"{_PREFIX}host/{me}", socket.gethostname())
  stop = threading.Event()
  watcher = threading.Thread(target=_watch, args=(client, me, stop), daemon=True,
                             name="trm_jax failure watcher")
  watcher.start()
  try:
    yield
  except BaseException as error:  # noqa: BLE001  (KeyboardInterrupt too: the others must stop)
    if isinstance(error, SystemExit) and error.code in (None, 0):
      raise
    if _leaving.locked():  # the watcher is ending the process for another host's failure, which
      _leaving.acquire()   # this error follows from (e.g. a collective lost that host): not news
    detail = error.code if isinstance(error, SystemExit) else f"{type(error).__name__}: {error}"
    failure = f"host {me} ({socket.gethostname()}) failed: {detail}"
    logging.exception("%s", failure)  # with the traceback
    _leave(client, me, failure)
  finally:
    stop.set()
    watcher.join()


def _watch(client, me: int, stop: threading.Event) -> None:
  """Polls for the other processes' failures until `stop`; on one, ends this process."""
  while not stop.wait(_POLL_S):
    try:
      failed = client.key_value_dir_get(f"{_PREFIX}failed/")
    except Exception as error:  # noqa: BLE001  (the service ended with process 0)
      if stop.is_set():
        return
      logging.error("host %d lost the coordination service, which runs in process 0 (%s: %s); "
                    "stopping", me, type(error).__name__, error)
      _exit()
    if any(_index(key) != me for key, _ in failed):
      _leave(client, me, None)


def _leave(client, me: int, failure: str | None) -> None:
  """Publishes this process's `failure` (None: it leaves for another's), waits until every
  process has answered, logs the failures and the silent hosts, and ends the process."""
  _leaving.acquire()  # never released: the process ends below
  try:
    if failure is not None:
      client.key_value_set(f"{_PREFIX}failed/{me}", failure)
    else:
      client.key_value_set(f"{_PREFIX}seen/{me}", "")
    deadline = time.monotonic() + _ANSWER_S
    while True:
      failed = dict(client.key_value_dir_get(f"{_PREFIX}failed/"))
      answered = {_index(key) for key in failed}
      answered |= {_index(key) for key, _ in client.key_value_dir_get(f"{_PREFIX}seen/")}
      silent = [i for i in range(jax.process_count()) if i not in answered and i != me]
      if not silent or time.monotonic() > deadline:
        break
      time.sleep(0.1)
    for i, line in sorted((_index(key), line) for key, line in failed.items()):
      if i != me:
        logging.error("%s", line)
    hosts = {_index(key): name for key, name in client.key_value_dir_get(f"{_PREFIX}host/")}
    for i in silent:
      logging.error("host %d (%s) did not answer within %.0fs of the failure: killed, crashed "
                    "or stuck", i, hosts.get(i, "hostname unknown"), _ANSWER_S)
    if me == 0:  # the service lives here: let the others read their answers first
      time.sleep(_POLL_S)
  except Exception as error:  # noqa: BLE001  (the service ended with process 0)
    logging.error("host %d lost the coordination service, which runs in process 0 (%s: %s); "
                  "stopping", me, type(error).__name__, error)
  _exit()


def _index(key: str) -> int:
  return int(key.rsplit("/", 1)[1])


def _exit() -> None:
  """Ends the process now, with status 1: neither blocked collectives nor JAX's exit handlers
  (its shutdown barrier waits for every process) may hold it."""
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(1)


class HostsDisagree(RuntimeError):
  """A step every process runs failed on some of them, or gave them different results."""


# What each process reports of such a step, in a buffer of one size on every process (as an
# allgather needs): its summary as JSON, then its error text (UTF-8, cut to fit).
_SUMMARY_BYTES, _ERROR_BYTES = 1024, 3072


def _report(summary: dict[str, Any], error: str) -> np.ndarray:
  data = json.dumps(summary).encode().ljust(_SUMMARY_BYTES, b"\0")
  text = error.encode()[:_ERROR_BYTES].ljust(_ERROR_BYTES, b"\0")
  return np.frombuffer(data + text, np.uint8)


def _read(row: np.ndarray) -> tuple[dict[str, Any], str]:
  raw = bytes(row)
  return (json.loads(raw[:_SUMMARY_BYTES].rstrip(b"\0")),
          raw[_SUMMARY_BYTES:].rstrip(b"\0").decode(errors="replace"))


def on_every_host(what: str, step: Callable[[], T],
                  summary: Callable[[T], dict[str, Any]]) -> T:
  """Runs `step` on every process and checks that all succeeded with equal `summary`s (small
  JSON). Every process reaches the one allgather, failed or not, so that one host's error
  stops all of them at once, each naming the failing processes and their errors, rather than
  leaving the others waiting in a collective. Raises HostsDisagree naming `what`."""
  if jax.process_count() == 1:
    return step()
  from jax.experimental import multihost_utils
  result, failure, mine, error = None, None, {}, ""
  try:
    result = step()
    mine = summary(result)
  except Exception as caught:  # noqa: BLE001  (reported to every process, then raised)
    failure, error = caught, f"{type(caught).__name__}: {caught}"
  reports = [_read(row) for row in multihost_utils.process_allgather(_report(mine, error))]
  failed = [i for i, (_, text) in enumerate(reports) if text]
  if failed:
    raise HostsDisagree(
        f"{what} failed on process(es) {failed} of {len(reports)}: "
        + "; ".join(f"process {i}: {reports[i][1]}" for i in failed)) from failure
  differ = [i for i, (theirs, _) in enumerate(reports) if theirs != reports[0][0]]
  if differ:
    raise HostsDisagree(
        f"{what} differs between processes: process(es) {differ} against process 0 ("
        + "; ".join(f"process {i}: {json.dumps(reports[i][0])[:300]}" for i in [0] + differ)
        + ")")
  return result
