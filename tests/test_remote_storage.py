"""Workdirs and source data on gs://, through the real code path (epath over gcsfs, Orbax over
tensorstore) against a local GCS emulator.

TFDS datasets (data.data_dir) stay local: array_record's C++ writer and reader cannot open
gs:// (test_a_bucket_data_dir_is_refused_naming_the_field).
"""

import importlib.util
import json
import socket

import jax
import numpy as np
import pytest
from etils import epath

import trm_jax
from tests.test_experiments import load_experiment, write_official_sources
from tests.test_main import small_smoke_config
from trm_jax import experiment, main, metrics, paths
from trm_jax.data import datasets

BUCKET = "gs://bucket"


@pytest.fixture(scope="module")
def gcs():
  """A GCS emulator in this process; the environment points gcsfs and tensorstore at it (set
  before either first opens gs://, which this module does first in its process)."""
  server_lib = pytest.importorskip("gcp_storage_emulator.server",
                                   reason="the GCS emulator (the `test` extra) is not installed")
  if importlib.util.find_spec("gcsfs") is None:
    pytest.skip("gcsfs (the `gcs` extra) is not installed")
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  server = server_lib.create_server("localhost", port, in_memory=True, default_bucket="bucket")
  server.start()
  url = f"http://localhost:{port}"
  with pytest.MonkeyPatch.context() as patch:
    patch.setenv("STORAGE_EMULATOR_HOST", url)
    patch.setenv("TENSORSTORE_GCS_HTTP_URL", url)
    patch.setenv("GOOGLE_CLOUD_PROJECT", "test")
    # gcsfs's bucket-type lookup (storage control API, which the emulator lacks) is retried,
    # with a credentials search, on every call; read when gcsfs is imported.
    patch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    yield BUCKET
  server.stop()


def _listing(path) -> set[str]:
  return {p.name for p in epath.Path(path).iterdir()}


def _records(workdir):
  return [(r["step"], r["kind"]) for r in metrics.read(workdir)]


def test_paths_on_a_bucket(gcs):
  path = epath.Path(f"{gcs}/paths/log.jsonl")
  paths.append_text(path, "a\n")
  paths.append_text(path, "b\n")  # an object has no append: read and written again
  assert path.read_text() == "a\nb\n"
  assert paths.absolute(f"{gcs}/paths") == epath.Path(f"{gcs}/paths")
  with paths.open_text(path.parent / "x.csv", "w", newline="") as f:
    f.write("1\r\n")
  with paths.open_text(path.parent / "x.csv", newline="", encoding="utf-8-sig") as f:
    assert f.read() == "1\r\n"


def test_metrics_on_a_bucket_keep_one_record_per_step_after_a_resume(gcs):
  workdir = f"{gcs}/metrics"
  writer = metrics.MetricWriter(workdir)
  for step in range(1, 5):  # ran to step 4; the checkpoint it resumes from is step 2
    writer.write(step, "train", {"lm_loss": float(step)})
  writer.close()
  writer = metrics.MetricWriter(workdir, resume_step=2)
  writer.write(3, "train", {"lm_loss": 13.0})
  writer.flush()
  assert [r["lm_loss"] for r in metrics.read(workdir)] == [1.0, 2.0, 13.0]
  writer.write(4, "train", {"lm_loss": 14.0})  # buffered: a bucket is written at most every
  assert len(metrics.read(workdir)) == 3      # REMOTE_FLUSH_SECONDS, or when flushed
  writer.close()
  assert [r["step"] for r in metrics.read(workdir)] == [1, 2, 3, 4]
  assert all(name.startswith("events.out.tfevents.") for name in _listing(f"{workdir}/tb"))


def test_a_bucket_data_dir_is_refused_naming_the_field(tmp_path):
  cfg = small_smoke_config()
  with pytest.raises(ValueError, match=r"'data\.data_dir' = 'gs://b/run/tfds' \(the default.*"
                                       "give a local directory"):
    main.run(cfg, "gs://b/run")
  cfg.data.data_dir = "gs://b/tfds"
  with pytest.raises(ValueError, match=r"'data\.data_dir' = 'gs://b/tfds': "):
    experiment.data_folders(cfg, str(tmp_path))


def test_official_sources_are_read_from_a_bucket(gcs, tmp_path):
  """A dataset built from official-format CSVs in a gs:// manual_dir (copied there)."""
  cfg = load_experiment("sudoku").get_config("mlp,runlocal")
  write_official_sources(cfg.data, tmp_path / "raw")
  manual = epath.Path(f"{gcs}/official")
  for name in ("train.csv", "test.csv"):
    (manual / name).write_bytes((tmp_path / "raw" / name).read_bytes())
  cfg.data.manual_dir, cfg.data.data_dir = str(manual), str(tmp_path / "tfds")
  data = datasets.prepare(cfg.data)
  assert len(data.test) > 0 and data.metadata["seq_len"] == 81


def test_a_run_on_a_bucket_trains_resumes_loads_and_evaluates(gcs, tmp_path, capsys):
  workdir = f"{gcs}/run"
  cfg = small_smoke_config()  # generates its CSVs into the workdir: manual_dir on the bucket
  cfg.data.data_dir = str(tmp_path / "tfds")
  cfg.train.max_steps, cfg.train.log_every_steps = 3, 1
  cfg.train.checkpoint_every_steps, cfg.eval.max_batches = 2, 1
  main.run(cfg, workdir)
  assert {"metrics.jsonl", "config.json", "eval_table.txt", "plots", "checkpoints", "tb",
          "raw"} <= _listing(workdir)
  assert {"curves.png", "eval_per_step.png"} <= _listing(f"{workdir}/plots")
  assert {"2", "3"} <= _listing(f"{workdir}/checkpoints")
  # periodic evaluations read validation ("eval"), test is read once at the end ("test")
  assert _records(workdir) == [(1, "train"), (2, "train"), (3, "train"), (3, "eval"),
                               (3, "test")]
  capsys.readouterr()

  cfg.train.max_steps = 4  # the last step; resumed from step 3 (the change is recorded)
  main.run(cfg, workdir, allow_config_change=True)
  assert f"resumed from checkpoint step 3 in {workdir}/checkpoints" in capsys.readouterr().out
  assert _records(workdir) == [(1, "train"), (2, "train"), (3, "train"), (3, "eval"),
                               (3, "test"), (4, "train"), (4, "eval"), (4, "test")]
  change = json.loads(epath.Path(f"{workdir}/config_changes.jsonl").read_text())
  assert change["step"] == 3 and change["changes"] == {"train.max_steps": [3, 4]}

  run = trm_jax.load(workdir)
  assert run.step == 4 and str(run.checkpoint) == f"{workdir}/checkpoints/4"
  assert run.config.train.max_steps == 4 and run.model_config.seq_len == 16
  assert set(jax.tree.map(np.asarray, run.params)) >= {"net", "lm_head"}

  result = main.run(cfg, workdir, eval_only=True)
  assert result["count"] == 16
  assert "eval_table_step4.txt" in _listing(workdir)
