"""The CPU GEMM kernels (trm_jax/kernels, AMX and AVX512-BF16 builds) against float64 NumPy
references, and the dispatch rules.

Each kernel test runs once per ISA and skips, with the reason, on machines without that ISA or a
C++ compiler (an AMD Zen 4 runs the avx512 cases, a Sapphire Rapids both); the model then runs
XLA's dot (covered by every other test).
"""

import functools
import re

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from trm_jax import config as config_lib
from trm_jax.kernels import cpu_gemm, execution
from trm_jax.kernels import matmul as km

KERNEL_ISAS = [
    pytest.param(isa, marks=pytest.mark.skipif(
        not cpu_gemm.available(isa),
        reason=f"{isa} kernel unavailable: {cpu_gemm.unavailable_reason(isa)}"))
    for isa in cpu_gemm.ISAS]
ISA = pytest.mark.parametrize("isa", KERNEL_ISAS)


@pytest.mark.parametrize("isa", cpu_gemm.ISAS)
def test_kernels_build_wherever_the_cpu_and_a_compiler_allow(isa):
  """A skip above must mean "no such CPU here", never "the source no longer compiles"."""
  if cpu_gemm.missing_support(isa) is not None:
    pytest.skip(f"no {isa} build here: {cpu_gemm.missing_support(isa)}")
  reason = cpu_gemm.unavailable_reason(isa)
  assert reason is None or "arch_prctl" in reason, reason


BF16_ULP = 2.0**-7  # one unit in the last place of bf16, relative (8 significant bits)


def bf16(rng, shape, scale=1.0):
  return jnp.asarray(rng.standard_normal(shape) * scale, jnp.bfloat16)


def f64(x):
  return np.asarray(jnp.asarray(x, jnp.float32), np.float64)


def round_bf16(x):
  return f64(jnp.asarray(np.asarray(x, np.float32), jnp.bfloat16))


@ISA
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("shape", [(64, 96, 64), (37, 70, 45), (1, 1, 1), (97, 4100, 33),
                                   (200, 97, 1024), (130, 2100, 70), (40, 2050, 300),
                                   (45, 96, 40), (8, 0, 8)])
def test_gemm_matches_float64(shape, trans_a, trans_b, isa):
  M, K, N = shape
  rng = np.random.default_rng(M * 7 + K)
  a = bf16(rng, (K, M) if trans_a else (M, K))
  b = bf16(rng, (N, K) if trans_b else (K, N))
  ref = (f64(a).T if trans_a else f64(a)) @ (f64(b).T if trans_b else f64(b))
  scale = np.abs(ref).max() + 1e-30
  out32 = f64(jax.jit(lambda a, b: cpu_gemm.gemm(a, b, isa=isa, trans_a=trans_a, trans_b=trans_b,
                                                 out_dtype=jnp.float32))(a, b))
  assert out32.shape == (M, N)
  np.testing.assert_allclose(out32, ref, atol=1e-5 * scale, rtol=0)  # fp32 accumulation only
  out16 = f64(jax.jit(lambda a, b: cpu_gemm.gemm(a, b, isa=isa, trans_a=trans_a, trans_b=trans_b))(a, b))
  # bf16 output = the fp32 result rounded once (to nearest even, like XLA's convert).
  np.testing.assert_array_equal(out16, round_bf16(out32))


def swiglu_reference(x, w):
  """PyTorch's bf16 SwiGLU in float64 with its roundings: g, u, silu(g), and the product."""
  gu = round_bf16(f64(x) @ f64(w))
  g, u = np.split(gu, 2, axis=-1)
  act = round_bf16(g / (1 + np.exp(-g)))
  return round_bf16(act * u), gu


@ISA
@pytest.mark.parametrize("M,K,I", [(64, 64, 256), (45, 97, 512), (33, 512, 1536)])
def test_swiglu_forward_matches_reference(M, K, I, isa):
  rng = np.random.default_rng(M + K + I)
  x, w = bf16(rng, (M, K)), bf16(rng, (K, 2 * I), K**-0.5)
  h_ref, gu_ref = swiglu_reference(x, w)
  h, gu = jax.jit(lambda x, w: cpu_gemm.swiglu(x, w, isa=isa, with_gu=True))(x, w)
  # g and u are plain GEMM outputs; fp32 summation order may flip the last bf16 bit rarely.
  np.testing.assert_allclose(f64(gu), gu_ref, rtol=BF16_ULP, atol=1e-6)
  assert np.mean(f64(gu) != gu_ref) < 1e-3
  # A flipped last bit of g or u can carry through the two later roundings.
  np.testing.assert_allclose(f64(h), h_ref, rtol=3 * BF16_ULP, atol=1e-3 * np.abs(h_ref).max())
  h_only = jax.jit(lambda x, w: cpu_gemm.swiglu(x, w, isa=isa, with_gu=False))(x, w)
  np.testing.assert_array_equal(f64(h_only), f64(h))


def _every_bf16():
  """All 65,536 bf16 bit patterns as a [256, 256] bf16 array, and as float64."""
  bits = np.arange(65536, dtype=np.uint32).reshape(256, 256)
  g = (bits << 16).view(np.float32)
  with np.errstate(invalid="ignore"):  # NaNs cast
    return jnp.asarray(g, jnp.bfloat16), g.astype(np.float64)


def _silu_reference(g):
  """silu and its derivative in float64, each rounded to fp32 and then bf16 (PyTorch's bf16
  F.silu and its backward, correctly rounded); NaN at silu(-inf) and at +-inf' as in PyTorch.
  Subnormal fp32 results are flushed to zero before the bf16 rounding: XLA:CPU runs its
  threads, custom calls included, with FTZ/DAZ set (only |g| < 2.4e-38 or g < -87 give one)."""
  def to_bf16(x):
    x32 = x.astype(np.float32)
    return round_bf16(np.where(np.abs(x32) < np.finfo(np.float32).tiny, 0 * x32, x32))

  with np.errstate(over="ignore", invalid="ignore"):
    s = 1 / (1 + np.exp(-g))
    return to_bf16(g * s), to_bf16(s * (1 + g * (1 - s)))


@ISA
def test_swiglu_activation_is_exact_for_every_bf16_gate_value(isa):
  g, g64 = _every_bf16()
  act_ref, dsilu_ref = _silu_reference(g64)
  # Backward kernel, fed g directly: with dh = u = 1 it returns [bf16(dsilu(g)), bf16(silu(g))].
  ones = jnp.ones((256, 256), jnp.bfloat16)
  dgu = jax.jit(functools.partial(cpu_gemm.swiglu_bwd, isa=isa))(ones, jnp.concatenate([g, ones], axis=1))
  np.testing.assert_array_equal(f64(dgu[:, :256]), dsilu_ref)
  np.testing.assert_array_equal(f64(dgu[:, 256:]), act_ref)
  # Forward kernel: x = I makes the GEMM's g exactly W's gate half (u = 1), so h = bf16(silu(g)).
  # Infinities and NaNs stay out of W: 0 * inf in the other rows' sums would be NaN.
  finite = np.isfinite(g64)
  w = jnp.concatenate([jnp.where(finite, g, 0), ones], axis=1)
  h = jax.jit(lambda x, w: cpu_gemm.swiglu(x, w, isa=isa, with_gu=False))(jnp.eye(256, dtype=jnp.bfloat16), w)
  np.testing.assert_array_equal(f64(h)[finite], act_ref[finite])


@pytest.mark.parametrize("isa", ["xla", "xla_native", *KERNEL_ISAS])
@pytest.mark.parametrize("M,K,I", [(64, 64, 256), (45, 97, 512)])
def test_swiglu_and_matmul_gradients_match_float64(M, K, I, isa):
  rng = np.random.default_rng(M * K)
  x, w = bf16(rng, (M, K)), bf16(rng, (K, 2 * I), K**-0.5)
  w2 = bf16(rng, (I, K), I**-0.5)
  ct = rng.standard_normal((M, K))

  def layer(x, w, w2, impl):
    return km.matmul(km.swiglu(x, w, impl), w2, impl)

  def loss(x, w, w2, impl):
    return jnp.sum(layer(x, w, w2, impl).astype(jnp.float32) * ct)

  grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)(x, w, w2, isa)
  # Independent reference: the same layer by hand in float64 with hand-written derivatives.
  X, W, W2 = f64(x), f64(w), f64(w2)
  g, u = np.split(X @ W, 2, axis=-1)
  s = 1 / (1 + np.exp(-g))
  h = g * s * u
  dh = ct @ W2.T
  dgu = np.concatenate([dh * u * s * (1 + g * (1 - s)), dh * g * s], axis=-1)
  exact = (dgu @ W.T, X.T @ dgu, h.T @ ct)
  for name, got, want in zip(("x", "w", "w2"), grads, exact):
    err = np.abs(f64(got) - want).max() / np.abs(want).max()
    assert err < 0.03, (name, err)  # a few bf16 roundings along the chain, nothing more


def test_xla_matmul_backward_dots_take_the_bf16_cotangent():
  """The backward GEMMs of the XLA path multiply bf16 by bf16 (fp32 accumulation), as the
  forward: plain autodiff of `dot(..., fp32).astype(bf16)` casts the cotangent to fp32 first and
  runs both backward GEMMs as fp32 x bf16 (half rate or worse on a GPU)."""
  x = jnp.ones((2, 6, 8), jnp.bfloat16)
  w = jnp.ones((8, 4), jnp.bfloat16)
  loss = lambda x, w: km.xla_matmul(x, w).astype(jnp.float32).sum()
  jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(x, w)
  dots = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]
  assert len(dots) == 2  # dx and dw (the forward dot sits inside the custom_vjp call)
  for eqn in dots:
    assert [v.aval.dtype for v in eqn.invars] == [jnp.bfloat16, jnp.bfloat16], eqn
    assert eqn.params["preferred_element_type"] == jnp.float32
  dx, dw = jax.grad(loss, argnums=(0, 1))(x, w)
  assert dx.shape == x.shape and dw.shape == w.shape
  np.testing.assert_array_equal(np.asarray(dx, np.float32), 4.0)  # sum over the 4 outputs
  np.testing.assert_array_equal(np.asarray(dw, np.float32), 12.0)  # sum over the 2 x 6 rows


@ISA
def test_model_logits_kernel_close_to_xla(isa):
  spec = config_lib.ModelSpec.from_config(config_lib.model_config(
      seq_len=16, vocab_size=11, hidden_size=64, num_heads=4, puzzle_emb_ndim=0, H_cycles=2,
      L_cycles=2, mlp_t=True, pos_encodings="none"))
  from trm_jax import model as model_lib
  params = model_lib.init_params(spec, jax.random.key(0))
  inputs = jnp.asarray(np.random.default_rng(0).integers(1, 11, (8, 16)), jnp.int32)
  outs = {}
  carry = model_lib.initial_carry(spec, 8)
  for impl in (isa, "xla"):
    with execution.using(execution.Settings(matmul=impl)):
      outs[impl] = np.asarray(jax.jit(
          lambda p: model_lib.forward(p, spec, carry, inputs, None)[1])(params))
  # Same math; the two differ by fp32 summation order and the SwiGLU rounding points only.
  assert np.abs(outs[isa] - outs["xla"]).max() < 0.1 * np.abs(outs["xla"]).max()
  assert (outs[isa].argmax(-1) == outs["xla"].argmax(-1)).mean() > 0.95


def test_dispatch_rules(monkeypatch):
  assert km.kernel_isa("xla", jnp.bfloat16) is None
  assert km.kernel_isa("xla_native", jnp.bfloat16) is None
  assert km.kernel_isa("auto", jnp.float32) is None
  assert km.kernel_isa("amx", jnp.float32) is None and km.kernel_isa("avx512", jnp.float32) is None
  with pytest.raises(ValueError, match="matmul implementation"):
    km.kernel_isa("mkl", jnp.bfloat16)
  # auto prefers AMX, then AVX512-BF16, then XLA's dot.
  works = {"amx", "avx512"}
  monkeypatch.setattr(cpu_gemm, "available", lambda isa: isa in works)
  monkeypatch.setattr(cpu_gemm, "unavailable_reason", lambda isa: None if isa in works else "no")
  assert km.kernel_isa("auto", jnp.bfloat16) == "amx"
  assert km.kernel_isa("avx512", jnp.bfloat16) == "avx512"
  works.discard("amx")
  assert km.kernel_isa("auto", jnp.bfloat16) == "avx512"
  with pytest.raises(RuntimeError, match="matmul='amx' but its kernel is unavailable: no"):
    km.kernel_isa("amx", jnp.bfloat16)
  works.clear()
  assert km.kernel_isa("auto", jnp.bfloat16) is None
  x = jnp.ones((4, 32), jnp.bfloat16)
  lowered = jax.jit(lambda x: km.matmul(x, x.T, "auto")).lower(x).as_text()
  assert "trm_" not in lowered  # auto fell back to XLA's dot: no custom call
  np.testing.assert_array_equal(jax.jit(lambda x: km.matmul(x, x.T, "auto"))(x),
                                np.full((4, 4), 32.0))


def _dot_output_dtypes(lowered_text: str) -> set[str]:
  """The result element types of the dot_generals of a lowered (StableHLO) program."""
  return set(re.findall(r"stablehlo\.dot_general.*-> tensor<[\dx]*x(\w+)>", lowered_text))


def test_a_step_built_under_other_settings_takes_their_kernels(monkeypatch):
  """The execution settings are read at trace time, so nothing traced under one may serve
  another. Under matmul="xla" every bf16 dot has an fp32 result, under "xla_native" a bf16 one:
  the same step built twice (`steps.train_step`, a new jit per build) and the module-level jit
  of `model.supervision_step` (the settings are in its key) each show both."""
  from trm_jax import model as model_lib
  from trm_jax import sharding as sharding_lib
  from trm_jax import steps, train
  cfg = config_lib.model_config(
      seq_len=12, vocab_size=7, num_puzzle_identifiers=2, hidden_size=32, num_heads=2,
      puzzle_emb_ndim=32, puzzle_emb_len=1, H_cycles=1, L_cycles=1, halt_max_steps=2,
      mlp_t=True, pos_encodings="none", compute_dtype="bfloat16")
  spec = config_lib.ModelSpec.from_config(cfg)
  train_cfg = ml_collections.ConfigDict(dict(
      lr=1e-3, lr_min_ratio=1.0, lr_warmup_steps=1, beta1=0.9, beta2=0.95, weight_decay=0.1,
      puzzle_emb_lr=1e-2, puzzle_emb_weight_decay=0.1, grad_clip_norm=0.0, ema=False,
      ema_rate=0.999))
  batch = {"inputs": jnp.ones((2, 12), jnp.int32), "labels": jnp.ones((2, 12), jnp.int32),
           "puzzle_identifiers": jnp.zeros((2,), jnp.int32)}
  state = jax.eval_shape(lambda: train.init_state(cfg, train_cfg, batch, 10, jax.random.key(0)))
  mesh = sharding_lib.make_mesh((-1, 1))
  dots = {}
  for impl in ("xla", "xla_native", "xla"):
    with execution.using(execution.Settings(matmul=impl)):
      dots[impl] = _dot_output_dtypes(
          steps.train_step(spec, train_cfg, 10, mesh, state, batch).as_text())
  assert "f32" in dots["xla"] and "bf16" not in dots["xla"], dots
  assert "bf16" in dots["xla_native"], dots

  native_traces = []
  native = km.xla_native_matmul
  monkeypatch.setattr(km, "xla_native_matmul",
                      lambda x, w: native_traces.append(1) or native(x, w))
  params = model_lib.init_params(cfg, jax.random.key(0))
  carry = model_lib.initial_carry(cfg, 2)
  with execution.using(execution.Settings(matmul="xla")):
    model_lib.supervision_step(params, cfg, carry, batch)
  assert not native_traces
  with execution.using(execution.Settings(matmul="xla_native")):
    model_lib.supervision_step(params, cfg, carry, batch)  # traced anew, not the xla trace
    traced = len(native_traces)
    assert traced > 0
    model_lib.supervision_step(params, cfg, carry, batch)  # the same settings: its own trace
  assert len(native_traces) == traced


def test_build_failure_raises_with_compiler_message(monkeypatch, tmp_path):
  """A failed build names the compiler's error (which `unavailable_reason()` then reports) and
  leaves no library in the cache."""
  monkeypatch.setenv("TRM_JAX_KERNEL_CACHE", str(tmp_path))
  fake = tmp_path / "fake-cxx"
  fake.write_text("#!/bin/sh\necho 'fake-cxx: cannot compile' >&2\nexit 1\n")
  fake.chmod(0o755)
  with pytest.raises(RuntimeError, match="cannot compile"):
    cpu_gemm.build("avx512", str(fake))
  assert not list(tmp_path.glob("*.so"))


@pytest.mark.parametrize("where", ["gpu_backend", "multi_device"])
def test_kernel_is_never_consulted_off_a_single_cpu_device(monkeypatch, where):
  """On a GPU/TPU host (often an AMX CPU) or a multi-device mesh, no matmul choice builds, loads
  or calls a kernel: the bf16 model lowers to XLA's dot alone."""
  if where == "gpu_backend":
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  else:
    monkeypatch.setattr(jax, "device_count", lambda *a: 8)

  def consulted(*args):
    raise AssertionError("a CPU kernel was consulted")

  monkeypatch.setattr(cpu_gemm, "available", consulted)
  monkeypatch.setattr(cpu_gemm, "unavailable_reason", consulted)
  monkeypatch.setattr(cpu_gemm, "best", consulted)
  from trm_jax import model as model_lib
  spec = config_lib.ModelSpec.from_config(config_lib.model_config(
      seq_len=16, vocab_size=11, hidden_size=64, num_heads=4, puzzle_emb_ndim=0, H_cycles=1,
      L_cycles=1, mlp_t=True, pos_encodings="none", compute_dtype="bfloat16"))
  params = model_lib.abstract_params(spec)
  carry = model_lib.initial_carry(spec, 2)
  inputs = jnp.ones((2, 16), jnp.int32)
  for impl in ("auto", *cpu_gemm.ISAS):
    assert km.kernel_isa(impl, jnp.bfloat16) is None
    with execution.using(execution.Settings(matmul=impl)):
      lowered = jax.jit(lambda p: model_lib.forward(p, spec, carry, inputs, None)[1]).lower(
          params).as_text()
    assert "trm_" not in lowered and "dot_general" in lowered


def test_attention_dispatch_takes_xla_off_an_nvidia_gpu(monkeypatch):
  from trm_jax.kernels import attention as ka
  with pytest.raises(ValueError, match="attention implementation"):
    ka.uses_cudnn("flash", jnp.bfloat16, 64)
  # The rules, with the platform answered both ways.
  monkeypatch.setattr(ka, "nvidia_gpu", lambda: True)
  assert ka.uses_cudnn("auto", jnp.bfloat16, 64) and ka.uses_cudnn("cudnn", jnp.float16, 128)
  assert not ka.uses_cudnn("xla", jnp.bfloat16, 64)
  assert not ka.uses_cudnn("auto", jnp.float32, 64)  # cuDNN's fused kernel is bf16/fp16 only
  assert not ka.uses_cudnn("auto", jnp.bfloat16, 12) and not ka.uses_cudnn("auto", jnp.bfloat16, 256)
  monkeypatch.setattr(ka, "nvidia_gpu", lambda: False)
  assert not ka.uses_cudnn("cudnn", jnp.bfloat16, 64)
  q = jax.random.normal(jax.random.key(0), (2, 8, 2, 16), jnp.bfloat16)
  lowered = jax.jit(lambda q: ka.attention(q, q, q, "cudnn")).lower(q).as_text()
  assert "custom_call" not in lowered  # the XLA path: no cuDNN custom call
  np.testing.assert_array_equal(jax.jit(lambda q: ka.attention(q, q, q, "cudnn"))(q),
                                jax.jit(ka.xla_attention)(q, q, q))


@pytest.fixture
def pallas_tpu_interpreted(monkeypatch):
  """The Pallas TPU kernels run on this CPU in Pallas's TPU interpret mode."""
  from jax.experimental import pallas as pl
  from jax.experimental.pallas import tpu as pltpu
  from jax.experimental.pallas.ops.tpu import flash_attention as pallas_flash
  original = pl.pallas_call
  monkeypatch.setattr(pallas_flash.pl, "pallas_call",
                      lambda *a, **k: original(*a, **{**k, "interpret": pltpu.InterpretParams()}))


@pytest.mark.parametrize("causal", [False, True])
def test_tpu_flash_attention_matches_the_xla_path(pallas_tpu_interpreted, causal):
  """Traced for a TPU, 'auto' takes the Pallas flash kernel (run here in its interpret mode);
  its outputs and gradients match the XLA path's, with 20 positions padded to a 128 block."""
  from trm_jax.kernels import attention as ka
  from trm_jax.kernels import target
  rng = np.random.default_rng(7)
  q, k, v = (jnp.asarray(rng.standard_normal((2, 20, 2, 16)), jnp.float32) for _ in range(3))
  ct = jnp.asarray(rng.standard_normal((2, 20, 2, 16)), jnp.float32)
  loss = lambda f: lambda q, k, v: jnp.sum(f(q, k, v) * ct)
  with target.lowering_for(target.Target("tpu", 1)):
    assert ka.uses_tpu_flash("auto") and not ka.uses_tpu_flash("xla")
    flash = lambda q, k, v: ka.attention(q, k, v, "auto", causal)
    out = flash(q, k, v)
    grads = jax.grad(loss(flash), argnums=(0, 1, 2))(q, k, v)
  reference = lambda q, k, v: ka.xla_attention(q, k, v, causal)
  np.testing.assert_allclose(out, reference(q, k, v), atol=2e-5)
  for got, want in zip(grads, jax.grad(loss(reference), argnums=(0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(got, want, atol=1e-4)
  assert not ka.uses_tpu_flash("auto")  # traced for this CPU: the XLA path
