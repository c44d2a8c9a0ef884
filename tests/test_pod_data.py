"""Data on several hosts without a shared disk: every process builds the dataset into its own
data.data_dir, and they check they read the same before training (datasets.prepare_on_every_host).

The two-process runs are the real CLI on test_resume's generated 4x4 Sudoku (12 train steps).
"""

import time


import processes
from test_builders import _sudoku_cfg, sudoku_csvs  # noqa: F401
from test_resume import (REPO, _command, _env,  # noqa: F401
                         assert_trains_like_one_process, uninterrupted)
from trm_jax.data import builders, datasets, generate


def _run_two(tmp_path, workdir, per_process_flags, timeout=300):
  """Both processes of one run, process i with `per_process_flags[i]`, until both end; returns
  their exit codes, outputs, and how many seconds after the start each ended."""
  port, start = processes.free_port(), time.time()
  codes, outputs, ended = processes.run_together(
      [_command(workdir) + list(flags) + processes.coordinator_flags(port, i)
       for i, flags in enumerate(per_process_flags)],
      [tmp_path / f"process{i}.log" for i in range(2)], [_env()] * 2, REPO, timeout)
  return codes, outputs, [t - start for t in ended]


def test_two_hosts_with_their_own_data_dirs_train_like_one(tmp_path, uninterrupted):
  """Neither process sees the other's data_dir (a pod's hosts share no disk); the generated
  CSVs go to the shared workdir, written by both at once."""
  data_dirs = [tmp_path / f"host{i}_tfds" for i in range(2)]
  codes, outputs, _ = _run_two(tmp_path, tmp_path / "run",
                               [[f"--config.data.data_dir={d}"] for d in data_dirs])
  assert codes == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
  for d in data_dirs:  # each built its own copy
    assert list(d.glob("sudoku/generated_4x4_val*/*/dataset_info.json")), sorted(d.rglob("*"))
  assert not list((tmp_path / "run" / "raw").glob(".generating-*"))
  assert_trains_like_one_process(tmp_path / "run", uninterrupted)


def test_a_data_failure_on_one_host_stops_both_naming_it(tmp_path):
  """Process 1's source folder lacks test.csv: it fails at once, process 0 after building its
  own copy; both exit with an error within seconds of each other, process 0 naming process 1
  and its error (before, process 0 waited minutes in a barrier and then named the barrier)."""
  manual_dirs = [tmp_path / f"host{i}_raw" for i in range(2)]
  for d in manual_dirs:
    generate.sudoku_csvs(d, size=4, num_train=64, num_test=16, seed=0)
  (manual_dirs[1] / "test.csv").unlink()
  codes, outputs, ended = _run_two(
      tmp_path, tmp_path / "run",
      [["--config.data.generate.kind=", f"--config.data.manual_dir={manual_dirs[i]}",
        f"--config.data.data_dir={tmp_path / f'host{i}_tfds'}"] for i in range(2)], timeout=120)
  assert codes[0] != 0 and codes[1] != 0, outputs
  assert max(ended) < 60 and abs(ended[0] - ended[1]) < 15, ended
  for output in outputs:
    assert "HostsDisagree: dataset sudoku/generated_4x4" in output
    assert "failed on process(es) [1] of 2" in output
    assert f"process 1: FileNotFoundError: config.data.manual_dir = '{manual_dirs[1]}' lacks " \
           "['test.csv']" in output, output[-3000:]
  assert "compiled in" not in outputs[0]  # stopped before the model


def test_fingerprints_agree_on_equal_builds_and_differ_on_others(tmp_path, sudoku_csvs):
  a = datasets.fingerprint(datasets.prepare(_sudoku_cfg(tmp_path / "a", sudoku_csvs)))
  b = datasets.fingerprint(datasets.prepare(_sudoku_cfg(tmp_path / "b", sudoku_csvs)))
  c = datasets.fingerprint(datasets.prepare(_sudoku_cfg(tmp_path / "c", sudoku_csvs, seed=1)))
  assert a == b
  assert a["records"] == c["records"] == {"train": 40 * (1 + 3), "test": 10}
  assert a["sha256"] != c["sha256"]  # other augmentations, same counts


def test_a_build_that_finds_the_dataset_put_there_meanwhile_opens_it(tmp_path, sudoku_csvs,
                                                                     monkeypatch):
  """Two processes building into one shared data_dir at once: the one that finishes second
  cannot rename its temporary folder into place, the dataset being there; it must open that
  one rather than fail."""
  cfg = _sudoku_cfg(tmp_path, sudoku_csvs)
  generate_records = builders.Sudoku._download_and_prepare
  other = {}

  def other_process_finishes_first(self, *args, **kwargs):
    if not other:  # the other process, started at the same time, is the faster one
      other["started"] = True
      other["fingerprint"] = datasets.fingerprint(datasets.prepare(cfg))
    return generate_records(self, *args, **kwargs)
  monkeypatch.setattr(builders.Sudoku, "_download_and_prepare", other_process_finishes_first)
  assert datasets.fingerprint(datasets.prepare(cfg)) == other["fingerprint"]
  left = [p.name for p in (tmp_path / "tfds" / "sudoku" / "t").iterdir()]
  assert left == ["1.0.0"], left  # no temporary folder left behind
