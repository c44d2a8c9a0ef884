"""metrics.jsonl: one record per step after a resume, written on process 0 only; throughput."""

import json

import jax
import pytest

from trm_jax import metrics


def _write_records(workdir, records):
  (workdir / metrics.METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))


def test_drop_after_keeps_the_records_up_to_the_step(tmp_path):
  records = [{"step": s, "kind": "train", "lm_loss": 1.0 / s} for s in range(1, 9)]
  records.insert(6, {"step": 6, "kind": "eval", "exact_accuracy": 0.5})
  _write_records(tmp_path, records)
  assert metrics.drop_after(tmp_path, 5) == 4  # train 6, eval 6, train 7, train 8
  assert metrics.read(tmp_path) == records[:5]
  assert metrics.drop_after(tmp_path, 5) == 0
  assert not list(tmp_path.glob("*.partial"))
  assert metrics.drop_after(tmp_path / "missing", 3) == 0


def test_drop_after_drops_a_record_cut_short_by_a_crash(tmp_path):
  _write_records(tmp_path, [{"step": 1, "kind": "train"}, {"step": 2, "kind": "train"}])
  with open(tmp_path / metrics.METRICS_FILE, "a") as f:
    f.write('{"step": 3, "kind": "tr')  # killed mid-write
  assert metrics.drop_after(tmp_path, 2) == 1
  assert [r["step"] for r in metrics.read(tmp_path)] == [1, 2]


def test_a_resumed_writer_continues_with_one_record_per_step(tmp_path):
  writer = metrics.MetricWriter(tmp_path)
  for step in range(1, 7):  # ran to step 6; the checkpoint it resumes from is step 4
    writer.write(step, "train", {"lm_loss": float(step)})
  writer.close()
  writer = metrics.MetricWriter(tmp_path, resume_step=4)
  for step in range(5, 9):
    writer.write(step, "train", {"lm_loss": 10.0 + step})
  writer.close()
  records = metrics.read(tmp_path)
  assert [r["step"] for r in records] == list(range(1, 9))
  assert [r["lm_loss"] for r in records] == [1.0, 2.0, 3.0, 4.0, 15.0, 16.0, 17.0, 18.0]


def test_only_process_0_writes(tmp_path, monkeypatch):
  # The 2-process CLI run (tests/test_resume.py) checks this end to end; here the writer alone.
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  _write_records(tmp_path, [{"step": s, "kind": "train"} for s in range(1, 5)])
  before = (tmp_path / metrics.METRICS_FILE).read_text()
  writer = metrics.MetricWriter(tmp_path, resume_step=2)  # would drop steps 3 and 4 on process 0
  writer.write(5, "train", {"lm_loss": 1.0})
  writer.close()
  assert not writer.active
  assert (tmp_path / metrics.METRICS_FILE).read_text() == before
  assert not (tmp_path / "tb").exists()


def test_read_names_the_bad_line(tmp_path):
  (tmp_path / metrics.METRICS_FILE).write_text('{"step": 1, "kind": "train"}\n{"step": 2,\n')
  with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: not valid JSON"):
    metrics.read(tmp_path)
  with pytest.raises(FileNotFoundError, match="metrics.jsonl: missing"):
    metrics.read(tmp_path / "elsewhere")


class _Clock:
  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


def test_throughput_windows_exclude_evaluation(monkeypatch):
  clock = _Clock()
  monkeypatch.setattr(metrics.time, "perf_counter", clock)
  meter = metrics.Throughput(global_batch=64, passes_per_step=6)
  clock.now += 5.0  # 10 steps in 5 s
  rates = meter.window(10)
  assert rates == pytest.approx({"steps_per_s": 2.0, "examples_per_s": 128.0,
                                 "supervision_steps_per_s": 2.0, "forward_passes_per_s": 12.0})
  clock.now += 9.0  # 4 steps and a 7 s evaluation
  meter.exclude(7.0)
  assert meter.window(4)["steps_per_s"] == pytest.approx(2.0)
  assert "mfu" not in rates and "model_tflops_per_s" not in rates  # no FLOP count (CPU)


def test_throughput_reports_mfu_with_a_flop_count_and_a_peak(monkeypatch):
  clock = _Clock()
  monkeypatch.setattr(metrics.time, "perf_counter", clock)
  meter = metrics.Throughput(global_batch=8, passes_per_step=2, flops_per_step=3e12,
                             peak_flops_per_s=100e12)
  clock.now += 2.0
  rates = meter.window(20)  # 10 steps/s * 3 TFLOP = 30 TFLOP/s of a 100 TFLOP/s peak
  assert rates["model_tflops_per_s"] == pytest.approx(30.0)
  assert rates["mfu"] == pytest.approx(0.3)
  unknown_peak = metrics.Throughput(global_batch=8, passes_per_step=2, flops_per_step=3e12)
  clock.now += 1.0
  rates = unknown_peak.window(10)
  assert rates["model_tflops_per_s"] == pytest.approx(30.0) and "mfu" not in rates
