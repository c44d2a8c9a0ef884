"""What a run prints: one channel, written by process 0 only.

    console = Console()                      # prints nothing on processes other than 0
    console.header([("workdir", "/tmp/run"), ("devices", "1 cpu"), ...])
    with console.progress(total=781, initial=0) as bar:
      console.line("step 390: eval exact_accuracy 0.6120")   # above the bar, never into it
    console.line(table)

Libraries are quiet unless asked: `quiet_libraries()` (called by every command through
`quiet_unless_verbose()` unless `--verbosity` is given) hides their INFO logs (Orbax's checkpoint manager, TFDS's builder,
JAX's backend probing), from every thread, and `library_output()` swallows what TFDS prints
while it builds a dataset. Warnings and errors always show, on every process.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
from typing import Iterator, Sequence

import jax
from absl import logging as absl_logging

_quiet = False


# Library warnings that tell a user of trm_jax nothing to act on: TFDS names every dataset
# built from a config object a "custom data configuration" (every trm_jax dataset is one), and
# finds no dataset_info.json in the folder it is about to build into.
_NOT_ACTIONABLE = (re.compile(r"^Using custom data configuration"),
                   re.compile(r"^Variant folder .* has no dataset_info\.json"))


class _DropNotActionable(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not any(pattern.search(message) for pattern in _NOT_ACTIONABLE)


def quiet_libraries() -> None:
  """Hides INFO (and DEBUG) logs: absl's (Orbax and TFDS log through it), and any Python
  logger that leaves its level to the root logger (JAX's), and the library warnings a user
  cannot act on (`_NOT_ACTIONABLE`). Process-wide, so also Orbax's background save threads.
  TFDS's progress bars go too."""
  global _quiet
  _quiet = True
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger().setLevel(logging.WARNING)
  absl_logger = logging.getLogger("absl")
  if not any(isinstance(f, _DropNotActionable) for f in absl_logger.filters):
    absl_logger.addFilter(_DropNotActionable())
  import tensorflow_datasets as tfds
  tfds.display_progress_bar(False)


def quiet_unless_verbose() -> None:
  """What every command does first: `quiet_libraries()` unless the user gave `--verbosity`
  (absl's flag: 0 brings the libraries' INFO lines back, 1 adds DEBUG)."""
  from absl import flags
  if not flags.FLAGS["verbosity"].present:
    quiet_libraries()


@contextlib.contextmanager
def library_output() -> Iterator[None]:
  """Discards what the block prints to stdout when libraries are quiet (TFDS prints its
  'Downloading and preparing dataset ...' banner rather than logging it)."""
  if not _quiet:
    yield
    return
  with contextlib.redirect_stdout(io.StringIO()):
    yield


class Console:
  """The run's status lines, progress bar and tables, on process 0 only."""

  def __init__(self):
    self.active = jax.process_index() == 0
    self._bar = None

  def line(self, text: str) -> None:
    """A line of status (or several), above the progress bar while it is open."""
    if not self.active:
      return
    if self._bar is not None:
      self._bar.write(text)
    else:
      print(text, flush=True)

  def header(self, rows: Sequence[tuple[str, str]]) -> None:
    width = max(len(label) for label, _ in rows)
    self.line("\n".join(f"{label + ':':<{width + 1}} {value}" for label, value in rows))

  @contextlib.contextmanager
  def progress(self, total: int, initial: int):
    """A tqdm bar over training steps (steps/s and ETA from tqdm; loss, exact accuracy and
    examples/s set by the caller with `set_postfix`); disabled off process 0."""
    from tqdm import tqdm
    with tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True,
              disable=not self.active) as bar:
      self._bar = bar if self.active else None
      try:
        yield bar
      finally:
        self._bar = None
