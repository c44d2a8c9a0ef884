r"""Every official recipe compiled for the TPU slices a user would rent (`python -m trm_jax.aot`
on this CPU, no TPU), as one markdown table: fits or not, HBM per chip, roofline step time and
MFU, the whole recipe's estimated time, and the largest batch per chip.

    python benchmarks/aot_table.py --out /tmp/aot_table            # compiles (about an hour)
    python benchmarks/aot_table.py --out /tmp/aot_table --render    # the table from the JSONs
    python benchmarks/aot_table.py --out /tmp/aot_table --h200_check   # the method vs a GPU

Each (recipe, slice) is one `python -m trm_jax.aot ... --noeval --json OUT/NAME.json` process.
The largest batch per chip is a line through two compiled points of the same chip kind (v5e: the
16- and 256-chip slices, at 48 and 3 rows per chip for batch 768): bytes per row from their
slope, the rest of each slice's peak as its fixed part, HBM minus that over the slope. It is an
estimate (`python -m trm_jax.aot --max_batch` finds the exact one by compiling).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]

RECIPES = [
    ("TRM Sudoku mlp_t", "experiments/sudoku.py:mlp"),
    ("TRM Sudoku att", "experiments/sudoku.py:att"),
    ("TRM Maze-Hard", "experiments/maze.py"),
    ("TRM ARC-AGI-1", "experiments/arc.py:arc1"),
    ("TRM ARC-AGI-2", "experiments/arc.py:arc2"),
    ("DIS ARC compact", "experiments/arc.py:dis_compact"),
    ("DIS ARC medium", "experiments/arc.py:dis_medium"),
    ("DIS N-Queens", "experiments/nqueens.py:dis"),
    ("HRM Sudoku", "experiments/sudoku.py:hrm"),
    ("HRM Maze-Hard", "experiments/maze.py:hrm"),
    ("HRM ARC-AGI-1", "experiments/arc.py:hrm"),
]
SLICES = [("v5e-16", "v5e:4x4"), ("v5e-256", "v5e:16x16"), ("v5p-32", "v5p:2x2x4"),
          ("v6e-8", "v6e:2x4")]


def _name(config: str, topology: str) -> str:
  return (config.replace("experiments/", "").replace(".py", "").replace(":", "_") + "__"
          + topology.replace(":", "_"))


# The ARC TRM and DIS recipes also on the other chip kinds.
OTHER_CHIPS = ("experiments/arc.py:arc1", "experiments/arc.py:dis_medium")


def compile_all(out: pathlib.Path) -> None:
  out.mkdir(parents=True, exist_ok=True)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  for slice_name, topology in SLICES:  # slice by slice: the two v5e slices first
    for _, config in RECIPES:
      if not slice_name.startswith("v5e") and config not in OTHER_CHIPS:
        continue
      path = out / f"{_name(config, topology)}.json"
      if path.exists():
        continue
      start = time.time()
      result = subprocess.run([sys.executable, "-m", "trm_jax.aot", "--config", config,
                               "--topology", topology, "--noeval", "--nofit_search",
                               "--json", str(path)],
                              cwd=REPO, env=env, capture_output=True, text=True)
      (out / f"{_name(config, topology)}.log").write_text(result.stdout + result.stderr)
      print(f"{config} on {topology}: exit {result.returncode} in {time.time() - start:.0f}s",
            flush=True)


def _peak(result: dict) -> float | None:
  """Peak bytes per chip: compiled, or (a step that does not fit) what XLA's out-of-memory
  error says its temporaries need."""
  if result.get("train"):
    return result["train"]["peak_bytes"]
  match = re.search(r"temporaries \(([\d.]+)G\)", result.get("error", ""))
  return float(match.group(1)) * 2**30 if match else None


def _per_row_slope(results: dict) -> float | None:
  """Peak bytes per row of the per-chip batch, from two v5e slices of one recipe."""
  a, b = results.get("v5e:4x4"), results.get("v5e:16x16")
  if not (a and b) or _peak(a) is None or _peak(b) is None:
    return None
  rows_a, rows_b = a["global_batch"] / a["chips"], b["global_batch"] / b["chips"]
  if rows_a == rows_b:
    return None
  return (_peak(a) - _peak(b)) / (rows_a - rows_b)


def render(out: pathlib.Path) -> str:
  header = ("| recipe | slice (chips, hosts) | global batch | fits | HBM per chip | step >= "
            "(compute / HBM traffic) | MFU <= | whole recipe >= | largest batch per chip (est.) "
            "| compile |")
  lines = [header, "|" + "---|" * 10]
  for label, config in RECIPES:
    results = {}
    for _, topology in SLICES:
      path = out / f"{_name(config, topology)}.json"
      if path.exists():
        results[topology] = json.loads(path.read_text())
    slope = _per_row_slope(results)
    for slice_name, topology in SLICES:
      r = results.get(topology)
      if r is None:
        continue
      train = r.get("train")
      rows = r["global_batch"] / r["chips"]
      largest = ""
      if slope and slope > 0 and _peak(r) is not None:
        fixed = _peak(r) - rows * slope
        largest = f"{int((r['chip']['hbm_bytes'] - fixed) // slope):,}"
      if train is None:
        lines.append(f"| {label} | {slice_name} ({r['chips']}, {r['hosts']}) | "
                     f"{r['global_batch']} | **no**: {_peak(r) / 2**30:.1f} GiB needed | | | "
                     f"| | {largest} | |")
        continue
      lines.append(
          f"| {label} | {slice_name} ({r['chips']}, {r['hosts']}) | {r['global_batch']} | "
          f"{'yes' if r['fits'] else '**no**'} | {train['peak_bytes'] / 2**30:.2f} / "
          f"{r['chip']['hbm_bytes'] / 2**30:.0f} GiB | {train['step_seconds'] * 1e3:.1f} ms "
          f"({train['compute_seconds'] * 1e3:.1f} / {train['memory_seconds'] * 1e3:.1f}) | "
          f"{100 * train.get('mfu', 0):.0f}% | "
          f"{r.get('recipe_hours', 0):.1f} h | {largest} | {train['compile_seconds']:.0f} s |")
  return "\n".join(lines)


# BUILD_NOTES "GPU: one H200": the DIS ARC-medium training step at batch 512 on one H200.
H200_MEASURED_S = {"trm_jax (cuDNN attention)": 0.7748, "official torch.compile": 0.2018}


def h200_check(out: pathlib.Path) -> str:
  """The roofline method against a measured step: the DIS ARC-medium train step compiled for a
  v5p-8 (4 chips) at 64 and 128 rows per chip, its per-chip matmul FLOPs and HBM traffic
  extrapolated linearly to 512 rows, and the H200's figures applied. The TPU compiler's fusion
  decides the traffic, so this checks the method's order of magnitude, not the GPU program."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  points = {}
  for rows in (64, 128):
    path = out / f"h200_check_{rows}.json"
    if not path.exists():
      subprocess.run([sys.executable, "-m", "trm_jax.aot", "--config",
                      "experiments/arc.py:dis_medium", "--topology", "v5p:2x2x1", "--noeval",
                      f"--config.train.global_batch_size={4 * rows}", "--json", str(path)],
                     cwd=REPO, env=env, capture_output=True, text=True, check=True)
    points[rows] = json.loads(path.read_text())["train"]
  from trm_jax import flops
  h200 = flops.chip("H200")

  def at(key, rows=512):
    a, b = points[64][key], points[128][key]
    return a + (b - a) * (rows - 64) / 64

  matmul, model, traffic = at("matmul_flops"), at("model_flops"), at("bytes_accessed")
  compute_s, memory_s = matmul / (h200.bf16_tflops * 1e12), traffic / (h200.hbm_tb_per_s * 1e12)
  step = max(compute_s, memory_s)
  lines = [f"DIS ARC medium, batch 512, one H200 ({h200.bf16_tflops:g} TFLOP/s, "
           f"{h200.hbm_tb_per_s:g} TB/s): matmuls {matmul / 1e12:.1f} TFLOP (model "
           f"{model / 1e12:.1f}), HBM traffic {traffic / 1e9:.0f} GB -> compute {compute_s:.3f} s, "
           f"memory {memory_s:.3f} s, roofline {step:.3f} s (MFU {100 * model / step / (h200.bf16_tflops * 1e12):.0f}%)"]
  for who, seconds in H200_MEASURED_S.items():
    lines.append(f"  measured {who}: {seconds:.3f} s = {seconds / step:.1f}x the roofline, "
                 f"MFU {100 * model / seconds / (h200.bf16_tflops * 1e12):.1f}%")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True, type=pathlib.Path)
  parser.add_argument("--render", action="store_true", help="only print the table")
  parser.add_argument("--h200_check", action="store_true",
                      help="only the roofline of the DIS ARC-medium step against the H200's")
  args = parser.parse_args()
  args.out.mkdir(parents=True, exist_ok=True)
  if args.h200_check:
    print(h200_check(args.out))
    return
  if not args.render:
    compile_all(args.out)
  print(render(args.out))


if __name__ == "__main__":
  main()
