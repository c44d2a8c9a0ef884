"""Print how far trm_jax is from the official PyTorch TRM on the shipped reference fixtures.

    python benchmarks/parity_report.py

For each fixture (official weights, batch and outputs; see tests/fixtures/): max |logit| and
|Q| differences over three eval supervision steps, the training-loss difference, and the max
relative gradient error over all parameters.
"""

import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

import trm_jax
from trm_jax import act, convert, train
from trm_jax.config import ModelSpec

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures"


def report(path: pathlib.Path) -> str:
  data = np.load(path)
  cfg = convert.model_config_from_official(json.loads(str(data["config_json"])))
  spec = ModelSpec.from_config(cfg)
  params = convert.from_official_state_dict(
      {k[2:]: data[k] for k in data.files if k.startswith("w/")}, cfg)
  batch = {"inputs": jnp.asarray(data["batch/inputs"], jnp.int32),
           "labels": jnp.asarray(data["batch/labels"], jnp.int32),
           "puzzle_identifiers": jnp.asarray(data["batch/puzzle_identifiers"], jnp.int32)}
  carry = trm_jax.initial_carry(cfg, batch["inputs"].shape[0])
  logit_diffs, q_diffs = [], []
  for step in range(3):
    carry, logits, q_halt, q_continue = trm_jax.supervision_step(params, cfg, carry, batch)
    logit_diffs.append(np.abs(logits - data[f"step{step}/logits"]).max())
    q_diffs.append(max(np.abs(q_halt - data[f"step{step}/q_halt"]).max(),
                       np.abs(q_continue - data[f"step{step}/q_continue"]).max()))

  state = act.refresh(spec, act.initial_state(cfg, batch), batch)
  table = params.pop("puzzle_emb")
  rows = jnp.take(table, state["data"]["puzzle_identifiers"], axis=0)

  def loss_fn(dense, rows):
    return train.supervision_loss({**dense, "puzzle_emb": table}, rows, spec, state)[0]

  loss, (grads, row_grads) = jax.value_and_grad(loss_fn, (0, 1))(params, rows)
  worst = np.abs(row_grads - data["grad/puzzle_emb_local"]).max() / np.abs(
      data["grad/puzzle_emb_local"]).max()
  names = convert.official_names(spec)
  for name, grad in convert._flatten(grads).items():
    if name.endswith("_init"):
      continue
    key, transposed = names[name]
    ref = data["grad/" + key]
    grad = np.asarray(grad).T if transposed else np.asarray(grad)
    worst = max(worst, np.abs(grad - ref).max() / np.abs(ref).max())
  fmt = lambda xs: " / ".join(f"{x:.1e}" for x in xs)
  return (f"| {path.stem} | {cfg.compute_dtype} | {fmt(logit_diffs)} | {fmt(q_diffs)} | "
          f"{abs(float(loss) - float(data['train/total_loss'])):.1e} | {worst:.1e} |")


def main():
  print(f"jax {jax.__version__}, backend {jax.default_backend()}")
  print("| fixture | compute | max abs logit diff (steps 1/2/3) | max abs Q diff | "
        "loss diff | max rel grad err |")
  print("|---|---|---|---|---|---|")
  for path in sorted(FIXTURES.glob("official_*.npz")):
    print(report(path))


if __name__ == "__main__":
  sys.exit(main())
