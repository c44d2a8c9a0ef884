"""Several processes of one run on this machine (a localhost coordinator), for the multi-host
tests: a free port, and the processes run together until all have ended."""

import socket
import subprocess
import time


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def coordinator_flags(port: int, index: int, count: int = 2) -> list[str]:
  return [f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={count}",
          f"--process_id={index}"]


def run_together(commands, logs, envs, cwd, timeout: float = 400):
  """Starts every command (its output to its log file: a full pipe would block one process
  while the others wait for it in a collective), waits until all have ended, kills what is
  left after `timeout`. Returns their exit codes, outputs and end times (time.time())."""
  procs = []
  for command, log, env in zip(commands, logs, envs):
    with open(log, "w") as out:
      procs.append(subprocess.Popen(command, cwd=cwd, env=env, stdout=out,
                                    stderr=subprocess.STDOUT))
  ended = [None] * len(procs)
  deadline = time.time() + timeout
  while None in ended and time.time() < deadline:
    for i, p in enumerate(procs):
      if ended[i] is None and p.poll() is not None:
        ended[i] = time.time()
    time.sleep(0.05)
  for p in procs:
    if p.poll() is None:
      p.kill()
  outputs = [open(log).read() for log in logs]
  assert None not in ended, f"still running after {timeout} s:\n{outputs[0][-3000:]}"
  return [p.returncode for p in procs], outputs, ended
