"""The run's console: process 0 only; libraries' INFO quiet by default, warnings kept."""

import logging

import jax
import pytest
from absl import logging as absl_logging

from trm_jax import console


@pytest.fixture
def restore_logging(monkeypatch):
  """quiet_libraries changes process-wide state: put it back for the other tests."""
  import tensorflow_datasets as tfds
  verbosity, root_level = absl_logging.get_verbosity(), logging.getLogger().level
  filters = list(logging.getLogger("absl").filters)
  monkeypatch.setattr(console, "_quiet", False)
  yield
  absl_logging.set_verbosity(verbosity)
  logging.getLogger().setLevel(root_level)
  logging.getLogger("absl").filters[:] = filters
  tfds.display_progress_bar(True)


def test_process_0_prints_header_lines_and_bar(capsys):
  out = console.Console()
  out.header([("workdir", "/tmp/run"), ("devices", "1 x cpu")])
  with out.progress(total=3, initial=0) as bar:
    out.line("step 2: eval exact_accuracy 0.5000")
    bar.update(3)
  captured = capsys.readouterr()
  assert captured.out.splitlines() == ["workdir: /tmp/run", "devices: 1 x cpu",
                                       "step 2: eval exact_accuracy 0.5000"]
  assert "3/3" in captured.err  # the bar, on stderr


def test_other_processes_print_nothing(capsys, monkeypatch):
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  out = console.Console()
  out.header([("workdir", "/tmp/run")])
  with out.progress(total=3, initial=0) as bar:
    out.line("step 2: eval")
    bar.update(3)
  out.line("table")
  assert capsys.readouterr() == ("", "")


def test_quiet_libraries_hides_info_and_keeps_warnings(restore_logging, caplog):
  console.quiet_libraries()
  # caplog's handler takes every record that reaches the root logger: the loggers' levels decide.
  absl_logging.info("orbax chatter")
  logging.getLogger("jax._src.xla_bridge").info("backend probing")
  absl_logging.warning("a real warning")
  # TFDS's two warnings on every trm_jax dataset (README command 1 began with them): nothing a
  # user can act on, so gone; other TFDS warnings stay.
  absl_logging.warning("Using custom data configuration: SudokuConfig(name='generated_6x6')")
  absl_logging.warning("Variant folder /tmp/w/tfds/sudoku/g/1.0.0 has no dataset_info.json")
  absl_logging.warning("Variant folder /tmp/x is corrupted")
  console.quiet_libraries()  # twice: still one filter
  messages = [r.getMessage() for r in caplog.records]
  assert messages == ["a real warning", "Variant folder /tmp/x is corrupted"]
  assert sum(isinstance(f, console._DropNotActionable)
             for f in logging.getLogger("absl").filters) == 1


def test_library_output_is_swallowed_only_when_quiet(restore_logging, capsys):
  with console.library_output():
    print("Downloading and preparing dataset ...")
  assert "Downloading" in capsys.readouterr().out
  console.quiet_libraries()
  with console.library_output():
    print("Downloading and preparing dataset ...")
  assert capsys.readouterr().out == ""
