"""DIS (Deep Improvement Supervision) against the official DIS code, and its target path.

`fixtures/official_dis_att_rope_fp32.npz` is `dis_att_rope_tiny.npz` of the shared official
references: `TinyRecursiveReasoningModel_ACTV5` + `ACTLossHeadV4` of
machinestein/Deep-Improvement-Supervision @ 032f116, PyTorch 2.13 CPU, fp32 (random weights).
`fixtures/official_dis_att_rope_bf16.npz` is the same configuration in bf16 (other weights),
written by `fixtures/make_official_reference.py` from that code.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import trm_jax
from trm_jax import act, config, convert, losses, model, train
from trm_jax.config import ModelSpec
from trm_jax.kernels import execution
from trm_jax.schemes import dis

from experiments import common

from conftest import (BF16_FACTOR, assert_matches_official_training, bf16_matmul_paths,
                      load_official, official_batch as _batch, official_training_call,
                      within_official_noise)

FIXTURE = "official_dis_att_rope_fp32.npz"
BF16_FIXTURE = "official_dis_att_rope_bf16.npz"


def test_official_dis_arch_converts_to_the_dis_scheme():
  cfg, state_dict, _ = load_official(FIXTURE)
  assert cfg.scheme == "dis" and cfg.H_cycles == 1 and cfg.L_cycles == 2
  assert cfg.halt_max_steps == 6
  assert trm_jax.forward_passes_per_step(cfg) == 3  # T * (n + 1): 18 per example at N_sup = 6
  params = convert.from_official_state_dict(state_dict, cfg)
  assert params["timestep_embed"].shape == (8, 64)  # N_sup + 2 rows
  trm_cfg = cfg.copy_and_resolve_references()
  trm_cfg.scheme = "trm"
  with pytest.raises(ValueError, match="timestep_embed"):
    convert.from_official_state_dict(state_dict, trm_cfg)
  with pytest.raises(ValueError, match="'name'"):
    convert.model_config_from_official({"seq_len": 4, "vocab_size": 4,
                                        "name": "hrm@SomethingElse"})


def test_inference_matches_official_steps():
  """Six eval steps through the public API: the timestep and the previous argmax fed back."""
  cfg, state_dict, data = load_official(FIXTURE)
  params = convert.from_official_state_dict(state_dict, cfg)
  batch = _batch(data)
  carry = trm_jax.initial_carry(cfg, 4)
  for step in range(6):
    used = batch["inputs"] if step == 0 else carry["prev_pred"]
    np.testing.assert_array_equal(used, data[f"step{step}/inputs_used"], err_msg=f"step {step}")
    carry, logits, _, _ = trm_jax.supervision_step(params, cfg, carry, batch)
    np.testing.assert_allclose(logits, data[f"step{step}/logits"], atol=1e-4, rtol=0,
                               err_msg=f"step {step}")
    np.testing.assert_array_equal(carry["prev_pred"], data[f"step{step}/preds"])
    np.testing.assert_array_equal(carry["steps"], step + 1)
    halted = model.scheme_of(cfg).halted(None, carry["steps"], None, training=False)
    np.testing.assert_array_equal(halted, data[f"step{step}/halted"])


def test_training_call_matches_official_loss_and_gradients():
  cfg, state_dict, data = load_official(FIXTURE)

  def official_path(state):  # the official call drew its own path; train on that one
    state["carry"]["path"] = jnp.asarray(data["train/path"], jnp.int32)

  loss, metrics, ours = official_training_call(cfg, state_dict, data, official_path)
  # The official DIS head has no Q-head gradients; ours are checked to be zero below.
  assert_matches_official_training(loss, metrics, ours, data, same_keys=False)
  # The official DIS head trains no Q head: its gradients are absent there and zero here.
  assert not np.any(ours["inner.q_head.weight"]) and not np.any(ours["inner.q_head.bias"])


def _bf16_case():
  """(bf16 config, the same in fp32, state_dict, fixture)."""
  cfg, state_dict, data = load_official(BF16_FIXTURE)
  assert cfg.scheme == "dis" and cfg.compute_dtype == "bfloat16"
  fp32_cfg = cfg.copy_and_resolve_references()
  fp32_cfg.compute_dtype = "float32"
  return cfg, fp32_cfg, state_dict, data


def _steps_on_official_inputs(cfg, state_dict, data):
  """The six eval steps through the public API, each fed the official run's token input (its
  previous argmax), so that bf16 rounding compares step by step instead of compounding through
  a flipped argmax."""
  params = convert.from_official_state_dict(state_dict, cfg)
  batch = _batch(data)
  carry = trm_jax.initial_carry(cfg, 4)
  logits_per_step = []
  for step in range(6):
    if step:
      carry = dict(carry, prev_pred=jnp.asarray(data[f"step{step - 1}/preds"], jnp.int32))
    carry, logits, _, _ = trm_jax.supervision_step(params, cfg, carry, batch)
    logits_per_step.append(np.asarray(logits, np.float64))
  return logits_per_step


@pytest.mark.parametrize("matmul", bf16_matmul_paths())
def test_bf16_inference_matches_within_bf16_precision(matmul):
  """Our bf16 logits deviate from our fp32 ones (which match the official fp32 code to 1e-4) by
  at most BF16_FACTOR x what the official bf16 code deviates, per step, in max and mean."""
  cfg, fp32_cfg, state_dict, data = _bf16_case()
  np.testing.assert_array_equal(data["step1/inputs_used"], data["step0/preds"])  # fed back
  with execution.using(execution.Settings(matmul=matmul)):
    ours = _steps_on_official_inputs(cfg, state_dict, data)
  exact = _steps_on_official_inputs(fp32_cfg, state_dict, data)
  for step in range(6):
    within_official_noise(ours[step], data[f"step{step}/logits"], exact[step],
                          f"logits, step {step}")


@pytest.mark.parametrize("matmul", bf16_matmul_paths())
def test_bf16_training_matches_within_bf16_precision(matmul):
  """The bf16 training call (on the official call's path) against the fp32 one: each gradient
  within BF16_FACTOR x the official bf16's deviation (max, plus one bf16 ulp, and mean), the
  metrics equal, and the loss within BF16_FACTOR x the most the official bf16 step-1 logits could
  move it (each example's loss is a mean over tokens of a cross-entropy whose gradient in the
  logits has l1 norm <= 2: |d loss| <= sum over examples of 2 mean_t max_v |d logit|)."""
  cfg, fp32_cfg, state_dict, data = _bf16_case()

  def official_path(state):
    state["carry"]["path"] = jnp.asarray(data["train/path"], jnp.int32)

  with execution.using(execution.Settings(matmul=matmul)):
    loss, metrics, grads = official_training_call(cfg, state_dict, data, official_path)
  exact_loss, _, exact = official_training_call(fp32_cfg, state_dict, data, official_path)
  exact_logits = _steps_on_official_inputs(fp32_cfg, state_dict, data)[0]
  loss_scale = (2 * np.abs(data["step0/logits"] - exact_logits).max(-1).mean(-1)).sum()
  assert abs(loss - exact_loss) <= BF16_FACTOR * loss_scale, (loss, exact_loss, loss_scale)
  for key in data.files:
    if key.startswith("train/metric/") and not key.endswith("loss"):
      assert metrics[key.removeprefix("train/metric/")] == float(data[key]), key
  for key in (k.removeprefix("grad/") for k in data.files if k.startswith("grad/")):
    ref = np.asarray(data[f"grad/{key}"], np.float64)
    one_bf16_ulp = 2.0 ** (np.floor(np.log2(np.abs(ref).max())) - 7)
    ours_err = np.abs(np.asarray(grads[key], np.float64) - exact[key])
    official_err = np.abs(ref - exact[key])
    assert ours_err.max() <= BF16_FACTOR * official_err.max() + one_bf16_ulp, key
    assert ours_err.mean() <= BF16_FACTOR * official_err.mean(), key


# ------------------------------------------------------------------------------- the path --


def _path_batch(rng, B=64, L=30, V=8):
  x0 = rng.integers(1, V, (B, L))
  x1 = np.where(rng.random((B, L)) < 0.5, rng.integers(1, V, (B, L)), x0)
  x1[:, -3:] = losses.IGNORE_LABEL_ID  # ignored labels, as the official ARC/Sudoku padding
  return jnp.asarray(x0, jnp.int32), jnp.asarray(x1, jnp.int32)


def test_linear_path_goes_from_input_to_labels_revealing_a_fixed_order():
  x0, x1 = _path_batch(np.random.default_rng(0))
  path = np.asarray(dis.linear_path(jax.random.key(3), x0, x1, 7))
  np.testing.assert_array_equal(path[:, 0], x0)
  np.testing.assert_array_equal(path[:, -1], x1)
  differ = np.asarray(x0 != x1)
  hamming = (path != np.asarray(x1)[:, None]).sum(-1)  # [B, frames]
  assert (np.diff(hamming, axis=1) <= 0).all() and (hamming[:, -1] == 0).all()
  n_diff = differ.sum(1)
  for k in range(7):  # frame k reveals floor(k * n_diff / 6) cells, each either x0 or x1
    np.testing.assert_array_equal(hamming[:, k], n_diff - (k * n_diff) // 6)
    assert ((path[:, k] == np.asarray(x0)) | (path[:, k] == np.asarray(x1))).all()
  # One order per row: a cell once revealed stays revealed.
  revealed = path == np.asarray(x1)[:, None]
  assert (revealed[:, 1:] >= revealed[:, :-1]).all()
  # Ignored labels are on the path: the input token until revealed, then -100.
  assert (path[:, 0, -3:] == np.asarray(x0)[:, -3:]).all() and (path[:, -1, -3:] == -100).all()


def test_targets_are_the_frame_of_the_step_with_ignored_cells_masked():
  cfg = config.tiny()
  cfg.scheme = "dis"
  spec = ModelSpec.from_config(cfg)
  x0, x1 = _path_batch(np.random.default_rng(1), B=3, L=spec.seq_len, V=spec.vocab_size)
  path = dis.linear_path(jax.random.key(0), x0, x1, spec.halt_max_steps + 1)
  scheme = model.scheme_of(spec)
  for t in range(1, spec.halt_max_steps + 1):
    carry = {"path": path, "steps": jnp.full((3,), t, jnp.int32)}
    target = np.asarray(scheme.targets(carry, {}))
    expected = np.asarray(path[:, t])
    np.testing.assert_array_equal(target, np.where(expected < 0, -100, expected))


def test_path_kept_while_a_row_stays_and_redrawn_when_replaced():
  cfg = config.tiny()
  cfg.scheme = "dis"
  spec = ModelSpec.from_config(cfg)
  rng = np.random.default_rng(2)
  x0, x1 = _path_batch(rng, B=4, L=spec.seq_len, V=spec.vocab_size)
  batch = {"inputs": x0, "labels": x1, "puzzle_identifiers": jnp.zeros(4, jnp.int32)}
  state = act.refresh(spec, act.initial_state(cfg, batch), batch, jax.random.key(0))
  first = np.asarray(state["carry"]["path"])
  state = dict(state, halted=jnp.array([True, False, True, False]))
  again = act.refresh(spec, state, batch, jax.random.key(1))
  second = np.asarray(again["carry"]["path"])
  np.testing.assert_array_equal(second[[1, 3]], first[[1, 3]])  # staying rows keep their order
  assert (second[[0, 2]] != first[[0, 2]]).any()  # replaced rows drew a new one
  np.testing.assert_array_equal(again["carry"]["steps"], [0, 0, 0, 0])


def test_every_row_runs_exactly_n_sup_steps_and_feeds_back_its_prediction():
  cfg = config.tiny()
  cfg.scheme = "dis"
  cfg.halt_exploration_prob = 0.5  # DIS has no exploration: ignored
  spec = ModelSpec.from_config(cfg)
  params = trm_jax.init_params(cfg, jax.random.key(0))
  params["q_head"]["bias"] = jnp.array([5.0, -5.0])  # a TRM Q head would halt every row
  rng = np.random.default_rng(3)
  x0, x1 = _path_batch(rng, B=4, L=spec.seq_len, V=spec.vocab_size)
  batch = {"inputs": x0, "labels": x1, "puzzle_identifiers": jnp.zeros(4, jnp.int32)}
  state = act.initial_state(cfg, batch)
  # Rows entered at different times: steps taken so far 0, 1, 2, 3.
  state = act.refresh(spec, state, batch, jax.random.key(0))
  state["carry"]["steps"] = jnp.array([0, 1, 2, 3], jnp.int32)
  state["carry"]["reset"] = jnp.array([True, False, False, False])
  rows = model.puzzle_rows(params, batch["puzzle_identifiers"])
  new, readout = act.advance(params, rows, spec, state, jax.random.key(1), training=True)
  np.testing.assert_array_equal(new["carry"]["steps"], [1, 2, 3, 4])
  # N_sup = 4 in the tiny config; no Q head, no exploration: only the row at step 4 halts.
  np.testing.assert_array_equal(new["halted"], [False, False, False, True])
  np.testing.assert_array_equal(new["carry"]["prev_pred"], np.argmax(readout.logits, -1))


def test_each_row_is_conditioned_on_its_own_timestep():
  """Row b embeds timestep row t_b = steps_b + 1 (clipped to N_sup): two rows with the same
  tokens and latents differ only through it."""
  cfg = config.tiny()
  cfg.scheme = "dis"
  spec = ModelSpec.from_config(cfg)
  params = trm_jax.init_params(cfg, jax.random.key(0))
  inputs = jnp.asarray(np.random.default_rng(4).integers(1, spec.vocab_size, (1, spec.seq_len)),
                       jnp.int32)
  data = {"inputs": jnp.concatenate([inputs, inputs]), "puzzle_identifiers": jnp.zeros(2, jnp.int32)}
  rows = model.puzzle_rows(params, data["puzzle_identifiers"])
  carry = dict(model.initial_carry(spec, 2), steps=jnp.array([0, 2], jnp.int32),
               prev_pred=data["inputs"])  # row 1 (t = 3) is fed the same tokens as row 0 (t = 1)

  def logits(p):
    return np.asarray(model.step(p, rows, spec, carry, data, training=False)[1].logits)

  out = logits(params)
  assert np.abs(out[0] - out[1]).max() > 1e-3
  table = params["timestep_embed"]
  same = dict(params, timestep_embed=table.at[3].set(table[1]))
  np.testing.assert_allclose(logits(same)[1], out[0], rtol=1e-5, atol=1e-5)
  late = dict(carry, steps=jnp.array([0, 50], jnp.int32))  # t clipped to N_sup
  clipped = dict(params, timestep_embed=table.at[spec.halt_max_steps].set(table[1]))
  out_late = np.asarray(model.step(clipped, rows, spec, late, data, training=False)[1].logits)
  np.testing.assert_allclose(out_late[1], out_late[0], rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- the options --


def _dis_cfg(**options):
  cfg = config.tiny()
  cfg.scheme = "dis"
  cfg.scheme_options = options
  return cfg


def test_options_are_validated_by_the_scheme():
  with pytest.raises(ValueError, match=r"'scheme_options\.input' = 'noise': must be one of"):
    model.scheme_of(_dis_cfg(input="noise"))
  with pytest.raises(ValueError, match=r"'scheme_options\.guidance'.*options"):
    model.scheme_of(_dis_cfg(guidance=2.0))
  trm = config.tiny()
  trm.scheme_options = {"input": "puzzle"}
  with pytest.raises(ValueError, match=r"scheme 'trm' has none"):
    model.scheme_of(trm)
  with pytest.raises(ValueError, match=r"scheme_options\.targets='mask'.*official"):
    convert.official_arch(_dis_cfg(targets="mask"))


def test_puzzle_input_ignores_the_previous_prediction():
  batch_rng = np.random.default_rng(5)
  for option, depends in (("prediction", True), ("puzzle", False)):
    spec = ModelSpec.from_config(_dis_cfg(input=option))
    params = trm_jax.init_params(spec, jax.random.key(0))
    data = {"inputs": jnp.asarray(batch_rng.integers(1, spec.vocab_size, (2, spec.seq_len)),
                                  jnp.int32), "puzzle_identifiers": jnp.zeros(2, jnp.int32)}
    rows = model.puzzle_rows(params, data["puzzle_identifiers"])
    carry = dict(model.initial_carry(spec, 2), steps=jnp.array([2, 2], jnp.int32))
    out = []
    for prev in (data["inputs"], (data["inputs"] + 1) % spec.vocab_size):
      out.append(np.asarray(model.step(params, rows, spec, dict(carry, prev_pred=prev), data,
                                       training=False)[1].logits))
    assert (np.abs(out[0] - out[1]).max() > 1e-4) == depends, option


def test_mask_targets_reveal_a_growing_share_of_the_labels():
  spec = ModelSpec.from_config(_dis_cfg(targets="mask"))
  x0, x1 = _path_batch(np.random.default_rng(6), B=8, L=spec.seq_len, V=spec.vocab_size)
  batch = {"inputs": x0, "labels": x1, "puzzle_identifiers": jnp.zeros(8, jnp.int32)}
  state = act.refresh(spec, act.initial_state(spec, batch), batch, jax.random.key(2))
  path = np.asarray(state["carry"]["path"])
  supervised = (np.asarray(x1) != -100).sum(1)
  n_sup = spec.halt_max_steps
  for k in range(n_sup + 1):
    shown = path[:, k] != -100
    np.testing.assert_array_equal(shown.sum(1), (k * supervised) // n_sup)
    np.testing.assert_array_equal(path[:, k][shown], np.asarray(x1)[shown])  # labels, never x0
  np.testing.assert_array_equal(path[:, -1], x1)


def test_linear_loss_weights_scale_step_t_by_2t_over_n_plus_1():
  cfg = _dis_cfg()
  spec = ModelSpec.from_config(cfg)
  weighted = ModelSpec.from_config(_dis_cfg(loss_weights="linear"))
  params = trm_jax.init_params(cfg, jax.random.key(0))
  x0, x1 = _path_batch(np.random.default_rng(7), B=4, L=spec.seq_len, V=spec.vocab_size)
  batch = {"inputs": x0, "labels": x1, "puzzle_identifiers": jnp.zeros(4, jnp.int32)}
  state = act.refresh(spec, act.initial_state(cfg, batch), batch, jax.random.key(0))
  rows = model.puzzle_rows(params, batch["puzzle_identifiers"])
  for steps_taken in (0, 2):
    s = dict(state, carry=dict(state["carry"], steps=jnp.full((4,), steps_taken, jnp.int32)))
    plain = float(train.supervision_loss(params, rows, spec, s, jax.random.key(1))[0])
    scaled = float(train.supervision_loss(params, rows, weighted, s, jax.random.key(1))[0])
    t = steps_taken + 1
    assert scaled == pytest.approx(plain * 2 * t / (spec.halt_max_steps + 1), rel=1e-6)


def test_learned_halting_head_adds_trms_bce_and_halts_evaluation():
  from trm_jax import inference
  cfg = common.dis(config.tiny(), 4)
  cfg.scheme_options = {"halting": "learned"}
  spec = ModelSpec.from_config(cfg)
  params = trm_jax.init_params(cfg, jax.random.key(0))
  params["q_head"]["bias"] = jnp.array([0.7, 0.0])
  rng = np.random.default_rng(0)
  x = rng.integers(1, spec.vocab_size, (6, spec.seq_len))
  batch = {"inputs": jnp.asarray(x, jnp.int32), "labels": jnp.asarray(x, jnp.int32),
           "puzzle_identifiers": jnp.zeros((6,), jnp.int32)}  # labels = inputs: some rows exact
  state = act.refresh(spec, act.initial_state(spec, batch), batch, jax.random.key(1))
  rows = model.puzzle_rows(params, batch["puzzle_identifiers"])
  plain_spec = ModelSpec.from_config(common.dis(config.tiny(), 4))
  loss, (_, metrics) = train.supervision_loss(params, rows, spec, state, jax.random.key(2))
  plain, _ = train.supervision_loss(params, rows, plain_spec, state, jax.random.key(2))
  # By hand from the public eval step (same first step, same weights).
  _, logits, q_halt, _ = trm_jax.supervision_step(params, cfg, trm_jax.initial_carry(cfg, 6),
                                                  batch)
  labels = np.asarray(batch["labels"])
  correct = (np.asarray(logits).argmax(-1) == labels).all(-1).astype(np.float64)
  q = np.asarray(q_halt, np.float64)
  bce = np.sum(np.maximum(q, 0) - q * correct + np.log1p(np.exp(-np.abs(q))))
  np.testing.assert_allclose(float(loss - plain), 0.5 * bce, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["q_halt_loss"]), bce, rtol=1e-5)
  # Evaluation with halt='q' stops every row at step 1 (q_halt = 0.7 + ... > 0 for this bias).
  out = inference.eval_batch(params, batch, spec=spec, strategy=inference.Strategy(halt="q"))
  np.testing.assert_array_equal(out["steps"], np.where(q > 0, 1, spec.halt_max_steps))
  assert (q > 0).any()
  with pytest.raises(ValueError, match="halting"):
    convert.official_arch(cfg)


def test_dual_loss_adds_the_reference_readout_against_the_previous_frame():
  from trm_jax import act, train
  cfg = common.dis(config.tiny(), 4)
  cfg.scheme_options.loss = "dual"
  spec = ModelSpec.from_config(cfg)
  official_spec = ModelSpec.from_config(common.dis(config.tiny(), 4))
  params = trm_jax.init_params(cfg, jax.random.key(3))
  rng = np.random.default_rng(1)
  x = rng.integers(1, spec.vocab_size, (5, spec.seq_len))
  batch = {"inputs": jnp.asarray(x, jnp.int32),
           "labels": jnp.asarray((x + 1) % spec.vocab_size, jnp.int32),
           "puzzle_identifiers": jnp.zeros((5,), jnp.int32)}
  state = act.refresh(spec, act.initial_state(spec, batch), batch, jax.random.key(1))
  rows = model.puzzle_rows(params, batch["puzzle_identifiers"])
  dual, (_, metrics) = train.supervision_loss(params, rows, spec, state, jax.random.key(2))
  plain, _ = train.supervision_loss(params, rows, official_spec, state, jax.random.key(2))
  # By hand: step 1 starts from y_init, read by the output head; frame 0 of the path is the input.
  logits = np.asarray(params["y_init"], np.float64) @ np.asarray(params["lm_head"]["kernel"],
                                                                 np.float64)
  s = np.where(logits >= 0, logits + 1, 1 / (1 - logits))  # stablemax
  log_p = np.log(s / s.sum())
  expected = sum(-log_p[x[b]].mean() for b in range(5))
  np.testing.assert_allclose(float(dual - plain), expected, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["reference_loss"]), expected, rtol=1e-5)
  with pytest.raises(ValueError, match="loss"):
    convert.official_arch(cfg)


# ------------------------------------------------------ consecutive training calls, carried --

CALLS_FIXTURE = "official_dis_calls_fp32.npz"


class _Call:
  """One call's part of the multi-call fixture, keyed as a one-call fixture (`train/...`,
  `grad/...`), for `assert_matches_official_training`."""

  def __init__(self, data, call):
    prefix = f"call{call}/"
    self.arrays = {k.removeprefix(prefix): data[k] for k in data.files if k.startswith(prefix)}
    self.files = list(self.arrays)

  def __getitem__(self, key):
    return self.arrays[key]


def test_consecutive_training_calls_match_official(monkeypatch):
  """Four official ACTLossHeadV4 training calls in a row with the carry (N_sup = 3, a new batch
  per call, rows 0 and 2 halted by hand after call 0), through `train.step_loss` (what
  `train.train_step` differentiates) with the ACT state carried from call to call and the
  weights fixed: per call the rows replaced, the token input (the puzzle at t = 1, the fed-back
  argmax after), the path frame supervised and the carry left behind exactly; the loss, metrics
  and gradients to the one-call test's tolerances (loss 1e-5 relative, metrics 1e-5 relative or
  1e-6, each gradient 2e-5 of its largest entry; the fixture's seed keeps fp32 rounding below
  4e-6 of it, see the fixture script). The official path draws (torch.rand) are injected."""
  cfg, state_dict, data = load_official(CALLS_FIXTURE)
  spec = ModelSpec.from_config(cfg)
  assert cfg.scheme == "dis" and spec.halt_max_steps == 3
  B = 4
  trainable, table, constants = train.split_params(
      spec, convert.from_official_state_dict(state_dict, cfg))
  batches = [_batch(_Call(data, c)) for c in range(4)]
  state = {"step": jnp.zeros([], jnp.int32), "trainable": trainable, "puzzle_emb": table,
           "constants": constants, "act": act.initial_state(cfg, batches[0]),
           "rng": jax.random.key_data(jax.random.key(0))}
  drawn = {}

  def official_draw(rng, x0, x1, num_frames):
    """The official draw for the rows this call replaces; all-ignored frames for the others,
    which must keep their carried path (checked after the call)."""
    path = drawn["path"]
    assert path.shape == (B, num_frames, spec.seq_len)
    return jnp.asarray(path, jnp.int32)

  monkeypatch.setattr(dis, "linear_path", official_draw)
  t_seen = set()
  for c in range(4):
    ref = _Call(data, c)
    forced = ref["forced"]
    act_state = dict(state["act"], halted=state["act"]["halted"] | forced)
    np.testing.assert_array_equal(act_state["halted"], ref["halted_in"], err_msg=f"call {c}")
    fresh = ref["halted_in"]
    drawn["path"] = np.where(fresh[:, None, None], ref["path"], losses.IGNORE_LABEL_ID)
    # A fresh row's path goes from its new puzzle to its labels (checks the fixture's draw).
    np.testing.assert_array_equal(ref["path"][fresh, 0], ref["batch/inputs"][fresh])
    np.testing.assert_array_equal(ref["path"][fresh, -1], ref["batch/labels"][fresh])
    previous = act_state["carry"]["prev_pred"]
    state = dict(state, act=act_state)

    loss_fn, params, rows, ids = train.step_loss(state, batches[c], spec)
    (loss, (new_act, metrics)), (grads, row_grads) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True)(params, rows)

    carry, current = new_act["carry"], new_act["data"]
    msg = f"call {c}"
    np.testing.assert_array_equal(carry["steps"], ref["steps"], err_msg=msg)
    np.testing.assert_array_equal(new_act["halted"], ref["halted"], err_msg=msg)
    np.testing.assert_array_equal(carry["path"], ref["path"], err_msg=msg)  # continuing rows kept
    np.testing.assert_array_equal(current["labels"], ref["labels"], err_msg=msg)
    np.testing.assert_array_equal(current["puzzle_identifiers"], ref["puzzle_identifiers"],
                                  err_msg=msg)
    np.testing.assert_array_equal(ids, ref["puzzle_identifiers"], err_msg=msg)
    used = np.where((ref["steps"] == 1)[:, None], current["inputs"], previous)
    np.testing.assert_array_equal(used, ref["inputs_used"], err_msg=msg)
    np.testing.assert_array_equal(
        model.scheme_of(spec).targets(carry, current), ref["targets"], err_msg=msg)
    np.testing.assert_array_equal(carry["prev_pred"], ref["preds"], err_msg=msg)  # fed back next
    t_seen.update(int(t) for t in ref["steps"])

    # step_loss divides by the global batch; the official loss head does not.
    by_key = {"puzzle_emb_local": np.asarray(row_grads) * B}
    names = convert.official_names(spec)
    for path, grad in convert._flatten(grads).items():
      if not path.endswith("_init"):
        key, transposed = names[path]
        by_key[key] = np.asarray(grad.T if transposed else grad) * B
    assert_matches_official_training(float(loss) * B, {k: float(v) for k, v in metrics.items()},
                                     by_key, ref, same_keys=False)
    assert not np.any(by_key["inner.q_head.weight"]) and not np.any(by_key["inner.q_head.bias"])
    state = dict(state, act=new_act, step=state["step"] + 1)  # weights fixed, as in the fixture

  # What the calls covered: every frame t = 1..N_sup, fresh rows next to continuing ones,
  # rows halted at N_sup and replaced, a row exactly right when it halted.
  assert t_seen == {1, 2, 3}
  mixed = [c for c in range(4) if 0 < data[f"call{c}/halted_in"].sum() < B]
  assert mixed == [1, 3]
  assert data["call2/halted"].any() and float(data["call3/train/metric/exact_accuracy"]) == 1
  staying = ~data["call1/halted_in"]  # fed their argmax at call 1, not their puzzle (call 0's)
  assert (data["call1/inputs_used"][staying] != data["call0/batch/inputs"][staying]).any()
