"""`python -m trm_jax.aot`: the real training step compiled for TPU slices on this CPU (libtpu's
topology descriptions, no TPU), and what the compiled module must show: the state laid out by
the sharding rules, no activation gathered, a gradient all-reduce the size of the gradients,
no CPU kernel in a TPU program, 2-host slices, and a configuration that cannot fit refused with
its largest buffers named."""

import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from trm_jax import aot
from trm_jax import sharding as sharding_lib
from trm_jax.kernels import cpu_gemm, target
from trm_jax.kernels import matmul as km

REPO = pathlib.Path(__file__).resolve().parents[1]


def _libtpu_reason():
  try:
    aot.topology_devices("v5e:2x2")
  except ValueError as error:
    return str(error)
  return None


_NO_LIBTPU = _libtpu_reason()


@pytest.fixture(autouse=True)
def _a_cpu_context_mesh():
  """Another test in this process (trm_jax.main.run) may have left JAX's context mesh on the
  CPU; compiles for a TPU slice must not depend on it."""
  with jax.set_mesh(sharding_lib.make_mesh((-1, 1))):
    yield
pytestmark = pytest.mark.skipif(_NO_LIBTPU is not None, reason=f"no TPU topology: {_NO_LIBTPU}")

SEQ, HIDDEN, TABLE_DIM, TABLE_ROWS = 36, 128, 128, 4096


def _config(mesh_shape=(-1, 1), batch=16, **model):
  sys.path.insert(0, str(REPO / "experiments"))
  import sudoku  # the smoke recipe: 6x6 Sudoku, mlp_t, a small network
  cfg = sudoku.get_config("smoke")
  cfg.model.update(hidden_size=HIDDEN, puzzle_emb_ndim=TABLE_DIM, compute_dtype="bfloat16",
                   **model)
  cfg.execution.matmul = "auto"
  cfg.train.global_batch_size = batch
  cfg.eval.global_batch_size = batch
  cfg.mesh_shape = mesh_shape
  return cfg


def _target(cfg, topology="v5e:2x2", rows=TABLE_ROWS):
  return aot.SliceRecipe(cfg, topology, aot.topology_devices(topology), rows, epoch_length=2000)


@pytest.fixture(scope="module")
def data_parallel():
  """The smoke recipe on a v5e-4 (4 chips, 1 host), purely data-parallel."""
  target_ = _target(_config((-1, 1)))
  lowered, spec, state, batch, _ = aot.lower_train(target_, 16)
  compiled = lowered.compile()
  return target_, spec, state, compiled, compiled.as_text()


def test_the_state_is_laid_out_by_the_rules_in_the_compiled_module():
  """On a (data 2, fsdp 2) mesh: kernels and their Adam moments split over fsdp, the puzzle
  table's rows over all 4 chips, scalars replicated: read off the compiled executable."""
  target_ = _target(_config((2, 2)))
  lowered, spec, state, _, _ = aot.lower_train(target_, 16)
  compiled = lowered.compile()
  state_shardings = compiled.input_shardings[0][0]
  paths = {sharding_lib._path(k): s
           for k, s in jax.tree_util.tree_flatten_with_path(state_shardings)[0]}
  expected = {
      "puzzle_emb": P(("data", "fsdp"), None),
      "trainable/net/layers/0/mlp/gate_up/kernel": P("fsdp", None),
      "opt_state/0/mu/net/layers/0/mlp/gate_up/kernel": P("fsdp", None),
      "step": P(),
  }
  for path, spec_ in expected.items():
    match = [p for p in paths if p.endswith(path)]
    assert match, (path, sorted(paths)[:20])
    got = paths[match[0]]
    ndim = 2 if spec_ else 0
    assert got.is_equivalent_to(jax.sharding.NamedSharding(got.mesh, spec_), ndim), (path, got)
  # Per chip the arguments hold a quarter of the table, not all of it.
  memory = compiled.memory_analysis()
  table = TABLE_ROWS * TABLE_DIM * 4
  whole = sum(np.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(state))
  assert memory.argument_size_in_bytes < whole - 0.7 * table


def test_data_parallel_step_gathers_no_activation(data_parallel):
  """The only all-gathers of a data-parallel step are the puzzle-table update's per-row ids and
  gradients ([B] and [B, D]), never an activation ([B, L, D])."""
  target_, spec, _, _, hlo = data_parallel
  gathers = [c for c in aot.collectives(hlo) if c["op"] == "all-gather"]
  bound = 16 * max(spec.hidden_size, spec.puzzle_emb_ndim) * 4  # a [B, D] fp32 array
  for c in gathers:
    assert c["bytes"] <= bound, c
    dims = [int(d) for d in re.findall(r"\[([\d,]*)\]", c["type"])[-1].split(",") if d]
    assert spec.seq_len not in dims and spec.total_len not in dims, c


def test_gradient_all_reduce_is_the_size_of_the_gradients(data_parallel):
  """Data parallel: the gradients of the dense weights are summed over the chips once per step:
  the all-reduced bytes are those of the trainable weights (fp32, or bf16 where XLA reduces
  before the cast back), plus a few scalars of metrics."""
  _, _, state, _, hlo = data_parallel
  n = sum(x.size for x in jax.tree.leaves(state["trainable"]))
  reduced = sum(c["bytes"] * c["count"] for c in aot.collectives(hlo) if c["op"] == "all-reduce")
  assert 2 * n <= reduced <= 4 * n + 64 * 1024, (reduced, n)


def test_no_cpu_kernel_enters_a_tpu_program(data_parallel, monkeypatch):
  """bf16 with matmul='auto' on a CPU host that has the kernels: a trace for the TPU mesh takes
  XLA's dot; the same process tracing for its own single CPU device would take the kernel."""
  *_, hlo = data_parallel
  assert not re.search(r'custom_call_target="trm_', hlo)
  monkeypatch.setattr(cpu_gemm, "available", lambda isa: True)
  monkeypatch.setattr(cpu_gemm, "best", lambda: "avx512")
  with target.lowering_for(target.Target("tpu", 4)):
    assert km.kernel_isa("auto", jnp.bfloat16) is None
  with target.lowering_for(target.Target("cpu", 1)):
    assert km.kernel_isa("auto", jnp.bfloat16) == "avx512"


def test_a_two_host_slice_compiles_and_reports():
  """v5p:2x2x2: 8 chips on 2 hosts, the training and evaluation steps."""
  cfg = _config((-1, 1))
  result = aot.run(cfg, "v5p:2x2x2", num_puzzle_identifiers=TABLE_ROWS, epoch_length=2000,
                   log=lambda line: None)
  assert (result["chips"], result["hosts"]) == (8, 2)
  assert result["fits"] and result["train"]["peak_bytes"] < result["chip"]["hbm_bytes"]
  assert result["train"]["matmul_flops"] > 0 and result["eval"]["matmul_flops"] > 0
  # XLA's cost analysis counts a loop body once; the recursion's loops run several times.
  assert result["train"]["matmul_flops"] > result["train"]["xla_flops"]
  # The no-grad cycle's n = 2 latent updates run as a loop (T - 1 = 1 cycle: no outer loop).
  assert result["train"]["loop_trip_counts"] == [2]
  assert 0 < result["train"]["bytes_accessed"]
  assert result["train"]["step_seconds"] > 0 and result["total_steps"] == 50 * 2000 // 16
  assert any(c["op"] == "all-reduce" for c in result["train"]["collectives"])


def test_the_puzzle_table_is_padded_to_split_over_any_power_of_two_slice():
  assert sharding_lib.table_rows(1) == 1 and sharding_lib.table_rows(1024) == 1024
  assert sharding_lib.table_rows(1025) == 2048
  assert sharding_lib.table_rows(876_406) == 876_544  # ARC-1: 856 x 1024
  assert sharding_lib.table_rows(876_406) % 256 == 0


def test_largest_fitting_batch_finds_the_boundary(monkeypatch):
  """The search against a memory model whose boundary is known by hand: 1 GiB fixed, 0.3 GiB
  per row of the global batch... in units of the 4 chips; 16 GiB of HBM."""
  calls = []

  def fake(target_, batch):
    calls.append(batch)
    peak = 2**30 + batch * 0.3 * 2**30 / 4
    if peak > 16 * 2**30:
      raise aot.DoesNotFit("Ran out of memory")
    return {"peak_bytes": peak}, None

  monkeypatch.setattr(aot, "compile_train", fake)
  target_ = _target(_config())
  # 1 + 0.075 b <= 16  ->  b <= 200: the largest multiple of 4 is 200.
  assert aot.largest_fitting_batch(target_, log=lambda line: None) == 200
  assert len(calls) <= 8
  assert aot.largest_fitting_batch(target_, known_fail=768, log=lambda line: None) == 200


def test_a_configuration_that_cannot_fit_is_refused_naming_its_largest_buffers(tmp_path):
  """A network too wide for a v5e's 16 GiB (2 blocks of width 16,384, fp32 weights with their
  Adam moments): exit status 2, the compiler's account of the largest allocations, no batch
  that fits."""
  command = [sys.executable, "-m", "trm_jax.aot", "--config", "experiments/sudoku.py:smoke",
             "--topology", "v5e:2x2", "--config.model.hidden_size=16384",
             "--config.model.num_heads=128", "--config.model.puzzle_emb_ndim=0",
             "--config.train.global_batch_size=4", "--config.eval.global_batch_size=4",
             "--json", str(tmp_path / "out.json")]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
  output = result.stdout + result.stderr
  assert result.returncode == 2, output[-3000:]
  assert "does NOT fit" in output
  assert "largest buffers per chip:" in output and "argument trainable/" in output, output[-3000:]
  assert "saved for the backward pass" in output
  assert "not even one row per chip fits" in output


def test_hbm_traffic_counts_each_loop_iteration():
  """XLA's cost analysis counts a loop body once: 10 and 20 iterations of a matmul cost it the
  same. The loop-aware count grows by the body's HBM traffic per iteration: an 8192^2 bf16
  array (128 MiB, too big to stay on chip) read as both operands and written back."""
  mesh = jax.sharding.Mesh(aot.topology_devices("v5e:2x2")[:1], ("x",))
  x = jax.ShapeDtypeStruct((8192, 8192), jnp.bfloat16,
                           sharding=jax.sharding.NamedSharding(mesh, P()))

  def compiled(n):
    with jax.set_mesh(mesh):  # (a test before this one may have set a CPU mesh)
      return jax.jit(lambda a: jax.lax.fori_loop(0, n, lambda i, c: jnp.tanh(c @ c), a)
                     ).lower(x).compile()

  def xla_bytes(c):
    cost = c.cost_analysis()
    return (cost[0] if isinstance(cost, (list, tuple)) else cost)["bytes accessed"]

  ten, twenty = compiled(10), compiled(20)
  (b10, trips10), (b20, trips20) = (aot.hlo_bytes_accessed(c.as_text()) for c in (ten, twenty))
  assert trips10 == [10] and trips20 == [20]
  array = 8192 * 8192 * 2
  assert 10 * 2 * array <= b20 - b10 <= 10 * 4 * array
  assert xla_bytes(twenty) == pytest.approx(xla_bytes(ten), rel=0.01)


def test_attention_on_a_tpu_mesh_is_the_flash_kernel_per_device():
  """Traced for a TPU slice, 'auto' attention is the Pallas flash kernel (a Mosaic custom call,
  run per device under shard_map): no [B, heads, L, L] score tensor is left in the program."""
  cfg = _config((-1, 1), mlp_t=False, pos_encodings="rope", num_heads=4)
  lowered, spec, *_ = aot.lower_train(_target(cfg), 16)
  hlo = lowered.compile().as_text()
  assert 'custom_call_target="tpu_custom_call"' in hlo
  L = spec.total_len
  assert not re.search(rf"\[\d+,\d+,{L},{L}\]", hlo)  # the XLA path's scores
  cfg.execution.attention = "xla"
  lowered, *_ = aot.lower_train(_target(cfg), 16)
  assert re.search(rf"\[\d+,\d+,{L},{L}\]", lowered.compile().as_text())


def test_the_abstract_training_batch_carries_the_schemes_batch_keys():
  from trm_jax import config
  from trm_jax.config import ModelSpec
  spec = ModelSpec.from_config(config.model_config(
      seq_len=8, vocab_size=16, puzzle_emb_ndim=0, puzzle_emb_len=0, scheme="rlrp",
      halt_max_steps=1))
  mesh = sharding_lib.make_mesh((1, 1))
  train = aot.abstract_batch(spec, 4, mesh)
  assert train["answer_mask"].shape == (4, 8) and train["answer_mask"].dtype == jnp.bool_
  assert train["reasoning"].shape == (4,) and train["reasoning"].dtype == jnp.int32
  assert set(aot.abstract_batch(spec, 4, mesh, training=False)) == {
      "inputs", "labels", "puzzle_identifiers"}  # inference reads the model keys only
