"""RLRP: the causal LM with latent refinement (schemes/rlrp.py), its corpora (data/lm.py), the
routed stream (pipeline.RoutedIndex) and a run through main.run + lm_eval."""

import dataclasses
import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from trm_jax import act, significance
from trm_jax import config as model_configs
from trm_jax import model as model_lib
from trm_jax.config import ModelSpec
from trm_jax.data import lm, pipeline
from trm_jax.schemes import rlrp

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"


def tiny_spec(**options):
  cfg = model_configs.model_config(
      seq_len=8, vocab_size=16, hidden_size=32, num_heads=2, num_layers=1, expansion=2.0,
      puzzle_emb_ndim=0, puzzle_emb_len=0, scheme="rlrp", halt_max_steps=1,
      compute_dtype="float32", loss_type="softmax")
  cfg.scheme_options = dict(K=3, **options)
  return ModelSpec.from_config(cfg)


def run_step(spec, params, inputs, record=True):
  batch = {"inputs": inputs, "labels": inputs, "puzzle_identifiers": jnp.zeros(len(inputs), int)}
  state = act.refresh(spec, act.initial_state(spec, batch), batch)
  return act.advance(params, None, spec, state, training=False, record=record)[1]


# ----------------------------------------------------------------------------------- model --


@pytest.mark.parametrize("head", ["attention", "mlp"])
def test_a_tokens_logits_do_not_depend_on_later_tokens(head):
  spec = tiny_spec(head=head)
  params = model_lib.init_params(spec, jax.random.key(0))
  inputs = jax.random.randint(jax.random.key(1), (2, 8), 0, 16)
  changed = inputs.at[:, 5:].set((inputs[:, 5:] + 7) % 16)
  a, b = run_step(spec, params, inputs), run_step(spec, params, changed)
  assert a.trace.shape == (3, 2, 8, 16)
  np.testing.assert_array_equal(a.trace[:, :, :5], b.trace[:, :, :5])  # every step k
  assert np.abs(a.trace[:, :, 5:] - b.trace[:, :, 5:]).max() > 1e-3  # later ones do
  np.testing.assert_array_equal(a.logits, a.trace[-1])
  # The same block without the mask mixes later tokens into earlier positions.
  from trm_jax import nn
  from flax import nnx
  x = jax.random.normal(jax.random.key(2), (1, 8, 32))
  x2 = x.at[:, 6:].add(1.0)
  for causal, expect_equal in ((True, True), (False, False)):
    block = nn.Block(spec, rngs=nnx.Rngs(3), causal=causal)
    rope = nn.rope_tables(spec)
    same = np.allclose(block(x, rope)[:, :6], block(x2, rope)[:, :6], atol=1e-6)
    assert same == expect_equal, causal


@pytest.mark.parametrize("head", ["attention", "mlp"])
def test_k_steps_scan_and_forward_passes(head):
  spec = tiny_spec(head=head)
  assert model_lib.forward_passes_per_step(spec) == 1 + 3
  params = model_lib.init_params(spec, jax.random.key(0))
  inputs = jax.random.randint(jax.random.key(1), (2, 8), 0, 16)
  readout = run_step(spec, params, inputs)
  # Step by step by hand: u_0 = h, u_k = u_{k-1} + alpha tanh(g([u, h])).
  m = model_lib.scheme_of(spec).module(params)
  h = m.hidden(inputs)
  u = h
  for k in range(3):
    u = u + 0.5 * jnp.tanh(m.head(m.g_in(jnp.concatenate([u, h], -1))))
    np.testing.assert_allclose(readout.trace[k], m.lm_head(h + m.proj(u)), atol=1e-5)
  l_0 = model_lib.scheme_of(spec).answer_logits(
      params, None, {"inputs": inputs.astype(jnp.int32)})
  np.testing.assert_allclose(l_0, m.lm_head(h + m.proj(h)), atol=1e-5)


def test_step_embedding_starts_at_zero_and_conditions_each_step():
  plain, embedded = tiny_spec(), tiny_spec(step_embed=True)
  params = model_lib.init_params(embedded, jax.random.key(0))
  assert params["step_embed"].shape == (3, 32)
  inputs = jax.random.randint(jax.random.key(1), (2, 8), 0, 16)
  without = {k: v for k, v in params.items() if k != "step_embed"}
  # Zero at init: the same logits as the head without it.
  np.testing.assert_array_equal(run_step(embedded, params, inputs).trace,
                                run_step(plain, without, inputs).trace)
  # Step k's row enters step k only: by hand, u_k = u + alpha tanh(g(W[u, h] + e_k)).
  e = jax.random.normal(jax.random.key(2), (3, 32))
  params = dict(params, step_embed=e)
  trace = run_step(embedded, params, inputs).trace
  m = model_lib.scheme_of(embedded).module(params)
  h = m.hidden(inputs)
  u = h
  for k in range(3):
    u = u + 0.5 * jnp.tanh(m.head(m.g_in(jnp.concatenate([u, h], -1)) + e[k][None, None]))
    np.testing.assert_allclose(trace[k], m.lm_head(h + m.proj(u)), atol=1e-5)


def test_truncated_gradient_is_the_same_forward_with_other_gradients():
  full, truncated = tiny_spec(), tiny_spec(gradient="truncated")
  params = model_lib.init_params(full, jax.random.key(0))
  inputs = jax.random.randint(jax.random.key(1), (2, 8), 0, 16)

  def last_step_loss(p, spec):
    return run_step(spec, p, inputs).logits[..., 0].sum()

  np.testing.assert_array_equal(run_step(full, params, inputs).logits,
                                run_step(truncated, params, inputs).logits)
  g_full = jax.grad(last_step_loss)(params, full)["g_in"]["kernel"]
  g_trunc = jax.grad(last_step_loss)(params, truncated)["g_in"]["kernel"]
  assert np.abs(g_full - g_trunc).max() > 1e-6
  assert np.abs(g_trunc).max() > 0


def test_bad_fields_are_named():
  cfg = model_configs.model_config(seq_len=8, vocab_size=16, puzzle_emb_ndim=0,
                                   puzzle_emb_len=0, scheme="rlrp", halt_max_steps=2)
  with pytest.raises(ValueError, match="'halt_max_steps' = 2"):
    model_lib.scheme_of(cfg)
  cfg.halt_max_steps = 1
  cfg.scheme_options = {"weights": "cubic"}
  with pytest.raises(ValueError, match="'scheme_options.weights' = 'cubic'"):
    model_lib.scheme_of(cfg)
  cfg.scheme_options = {"K": 0}
  with pytest.raises(ValueError, match="'scheme_options.K' = 0"):
    model_lib.scheme_of(cfg)


# ---------------------------------------------------------------------------------- losses --


def test_convex_weights():
  np.testing.assert_allclose(rlrp.convex_weights(4, "uniform"), [0.25] * 4)
  np.testing.assert_allclose(rlrp.convex_weights(4, "linear"), [0.1, 0.2, 0.3, 0.4], rtol=1e-6)
  np.testing.assert_allclose(rlrp.convex_weights(4, "last"), [0, 0, 0, 1])
  np.testing.assert_allclose(rlrp.convex_weights(1, "linear"), [1.0])


def test_soft_rl_and_its_answer_span_mask_by_hand():
  # K=2 steps, one row, 3 tokens, 2 classes; labels [0, 1, 1].
  logits = jnp.asarray([[[[0.0, 0.0], [0.0, math_log(3)], [math_log(3), 0.0]]],
                        [[[math_log(4), 0.0], [0.0, 0.0], [0.0, math_log(9)]]]])
  labels = jnp.asarray([[0, 1, 1]])
  # p_k(y*): step 1: 1/2, 3/4, 1/4; step 2: 4/5, 1/2, 9/10.
  everything = jnp.ones((1, 3), bool)
  expected_all = -((0.5 + 0.75 + 0.25) / 3 + (0.8 + 0.5 + 0.9) / 3) / 2
  np.testing.assert_allclose(rlrp.soft_rl(logits, labels, everything), [expected_all], rtol=1e-6)
  answer = jnp.asarray([[False, True, True]])
  expected_answer = -((0.75 + 0.25) / 2 + (0.5 + 0.9) / 2) / 2
  np.testing.assert_allclose(rlrp.soft_rl(logits, labels, answer), [expected_answer], rtol=1e-6)
  np.testing.assert_allclose(rlrp.soft_rl(logits, labels, jnp.zeros((1, 3), bool)), [0.0])


def math_log(x):
  return float(np.log(x))


def test_improvement_penalty_by_hand():
  ce = jnp.asarray([[1.0, 2.0, 0.3], [0.5, 2.5, 0.3]])  # [K=2, B=3]
  np.testing.assert_allclose(rlrp.improvement_penalty(ce, 0.1), [0.0, 0.6, 0.1], atol=1e-6)
  np.testing.assert_allclose(rlrp.improvement_penalty(ce, 0.0), [0.0, 0.5, 0.0], atol=1e-6)
  # Its gradient moves CE_K only (+1 where the relu is active), never CE_1.
  grad = jax.grad(lambda c: rlrp.improvement_penalty(c, 0.1).sum())(ce)
  np.testing.assert_array_equal(grad[0], [0.0, 0.0, 0.0])
  np.testing.assert_array_equal(grad[-1], [0.0, 1.0, 1.0])


@pytest.mark.parametrize("penalty_span", ["answer", "all"])
def test_loss_routes_rl_and_penalty_to_reasoning_rows_only(penalty_span):
  spec = tiny_spec(rl_weight=0.5, penalty_weight=0.25, margin=0.1, weights="linear",
                   penalty_span=penalty_span)
  scheme = model_lib.scheme_of(spec)
  logits = jax.random.normal(jax.random.key(0), (3, 2, 8, 16))
  labels = jax.random.randint(jax.random.key(1), (2, 8), 0, 16).at[:, 6:].set(-100)
  answer = jnp.zeros((2, 8), bool).at[:, 3:6].set(True)
  readout = rlrp.Readout(logits[-1], jnp.zeros(2), jnp.zeros(2), None, {"step_logits": logits})
  carry = {"steps": jnp.ones(2, jnp.int32)}
  ce = rlrp.step_cross_entropy(logits, labels)
  ds = (rlrp.convex_weights(3, "linear")[:, None] * ce).sum(0)
  rl = rlrp.soft_rl(logits, labels, answer)
  # The penalty's CEs: over the answer digits (tokens 3-5) only, or over every label.
  answer_ce = rlrp.step_cross_entropy(logits, jnp.where(answer, labels, -100))
  imp = rlrp.improvement_penalty(answer_ce if penalty_span == "answer" else ce, 0.1)
  for reasoning in ([1, 1], [0, 0], [1, 0]):
    r = np.asarray(reasoning, bool)
    data = {"reasoning": jnp.asarray(reasoning), "answer_mask": answer}
    total, metrics = scheme.loss(readout, labels, carry, data, jnp.ones(2, bool))
    expected = ds.sum() + 0.5 * rl[r].sum() + 0.25 * imp[r].sum()
    np.testing.assert_allclose(total, expected, rtol=1e-5)
    assert metrics["count"] == r.sum()
    np.testing.assert_allclose(metrics["step2_ce_loss"], ce[1].sum(), rtol=1e-6)
  # By hand, the CE of step 1 row 0: mean over the 6 labelled tokens of -log softmax.
  log_p = jax.nn.log_softmax(logits[0, 0])
  np.testing.assert_allclose(ce[0, 0], -np.mean([log_p[t, labels[0, t]] for t in range(6)]),
                             rtol=1e-6)
  np.testing.assert_allclose(answer_ce[0, 0],
                             -np.mean([log_p[t, labels[0, t]] for t in range(3, 6)]), rtol=1e-6)


# ------------------------------------------------------------------------------------ data --


def corpus_config(**overrides):
  values = dict(name="t", seq_len=16, num_train=300, num_test=60, add_digits=3, mul_digits=2,
                seed=0)
  values.update(overrides)
  return lm.CorpusConfig.from_config(values)


def problem_key(problem):
  expression = problem.split("=")[0]
  op = "+" if "+" in expression else "*"
  a, b = map(int, expression.split(op))
  return op, min(a, b), max(a, b)


def test_arithmetic_corpus_is_seeded_unique_disjoint_and_correct():
  splits = lm.arithmetic_problems(corpus_config())
  train, test = splits["train"], splits["test"]
  assert splits == lm.arithmetic_problems(corpus_config())
  assert splits != lm.arithmetic_problems(corpus_config(seed=1))
  assert len(train) == 300 and len(test) == 60 and splits["validation"] == []

  keys_train, keys_test = [problem_key(p) for p in train], [problem_key(p) for p in test]
  assert len(set(keys_train)) == 300 and len(set(keys_test)) == 60  # unique, swaps included
  assert not set(keys_train) & set(keys_test)
  for problem in train + test:
    expression, answer = problem.split("=")
    assert int(answer) == eval(expression)  # noqa: S307 (digits and one operator)
  records = lm.arithmetic_records(test, 16)
  for i, problem in enumerate(test):
    assert lm.decode(records["inputs"][i]) == problem
    assert lm.decode(records["labels"][i][records["answer_mask"][i]]) == problem.split("=")[1]
    assert records["labels"][i][records["answer_mask"][i].nonzero()[0][-1] + 1] == lm.EOS
  with pytest.raises(ValueError, match="seq_len = 4"):
    lm.arithmetic_records(test, 4)
  with pytest.raises(ValueError, match="only .* distinct problems"):
    lm.arithmetic_problems(corpus_config(num_train=500, add_digits=1, mul_digits=1))


def test_validation_problems_are_seeded_disjoint_and_leave_test_alone():
  plain = lm.arithmetic_problems(corpus_config())
  splits = lm.arithmetic_problems(corpus_config(num_validation=40))
  assert splits == lm.arithmetic_problems(corpus_config(num_validation=40))  # seeded
  assert splits["validation"] != lm.arithmetic_problems(
      corpus_config(num_validation=40, seed=1))["validation"]
  assert [len(splits[s]) for s in ("train", "validation", "test")] == [300, 40, 60]
  # One stream: test first (unchanged by the validation split), validation next, then train.
  assert splits["test"] == plain["test"]
  assert splits["validation"] == plain["train"][:40]
  assert splits["train"][:260] == plain["train"][40:]
  keys = {name: {problem_key(p) for p in splits[name]} for name in splits}
  assert len(keys["validation"]) == 40
  for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
    assert not keys[a] & keys[b], (a, b)
    # and by the question string itself
    assert not ({p.split("=")[0] for p in splits[a]} & {p.split("=")[0] for p in splits[b]})
  for problem in splits["validation"]:
    expression, answer = problem.split("=")
    assert int(answer) == eval(expression)  # noqa: S307


def test_prepare_gives_validation_and_test_scored_on_answer_and_eos(tmp_path):
  import ml_collections
  text = tmp_path / "t.txt"
  text.write_text("abcdefghij" * 40, encoding="utf-8")
  values = dict(name="t", seq_len=16, num_train=50, num_test=10, num_validation=8,
                add_digits=2, mul_digits=1, seed=0, text_files=str(text), test_fraction=0.1,
                validation_fraction=0.1)
  data = lm.prepare(ml_collections.ConfigDict({"builder_config": values}))
  assert len(data.test) == 10 and len(data.validation) == 8
  problems = lm.arithmetic_problems(lm.CorpusConfig.from_config(values))
  for source, texts in ((data.validation, problems["validation"]), (data.test, problems["test"])):
    for i, problem in enumerate(texts):
      record = source[i]
      assert lm.decode(record["inputs"]) == problem
      kept = record["labels"][record["labels"] != lm.PAD].tolist()
      assert kept == lm.encode(problem.split("=")[1]).tolist() + [lm.EOS]  # answer, then EOS
  no_validation = lm.prepare(ml_collections.ConfigDict(
      {"builder_config": dict(values, num_validation=0)}))
  assert no_validation.validation is None
  # By hand: '12+3=15' keeps the labels of '1', '5' and EOS (positions 5, 6, 7), nothing else.
  labels = lm.answer_only(lm.arithmetic_records(["12+3=15"], 10))["labels"][0]
  assert labels.tolist() == [0, 0, 0, 0, 0, ord("1") + 3, ord("5") + 3, lm.EOS, 0, 0]
  with pytest.raises(ValueError, match="num_validation = -1"):
    lm.CorpusConfig.from_config(dict(values, num_validation=-1))
  with pytest.raises(ValueError, match="test_fraction \\+ validation_fraction"):
    lm.CorpusConfig.from_config(dict(values, test_fraction=0.5, validation_fraction=0.5))


def test_carries_by_hand():
  assert [lm.carries(p) for p in ("123+456=579", "15+7=22", "987+65=1052", "999+1=1000",
                                  "0+0=0", "50+50=100")] == [0, 1, 3, 3, 0, 1]


def test_exact_match_split_by_operation_and_carries_by_hand():
  from trm_jax import lm_eval
  problems = ["12+34=46", "99+1=100", "7*8=56", "15+7=22", "987+65=1052", "3*3=9"]
  exact = np.array([[1, 0, 0, 1, 0, 1],    # step 1
                    [1, 1, 1, 0, 1, 1]], bool)  # step 2
  out = lm_eval.split_exact(problems, exact)
  assert out["by_operation"] == {
      "+": {"examples": 4, "exact_accuracy": [0.5, 0.75]},
      "*": {"examples": 2, "exact_accuracy": [0.5, 1.0]}}
  assert out["additions_by_carries"] == {  # 12+34: 0 carries, 15+7: 1, 99+1 and 987+65: 2 / 3
      "0": {"examples": 1, "exact_accuracy": [1.0, 1.0]},
      "1": {"examples": 1, "exact_accuracy": [1.0, 0.0]},
      "2": {"examples": 1, "exact_accuracy": [0.0, 1.0]},
      "3+": {"examples": 1, "exact_accuracy": [0.0, 1.0]}}


# ------------------------------------------------------------------- evaluation by hand --


def test_holm_by_hand():
  from trm_jax import lm_eval
  np.testing.assert_allclose(significance.holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02],
                             rtol=1e-12)
  # Capped at 1, and monotone in the sorted order (0.6 alone would be 0.6; it follows 1.0).
  np.testing.assert_allclose(significance.holm([0.5, 0.6]), [1.0, 1.0])
  np.testing.assert_allclose(significance.holm([0.02, 0.001, 0.02]), [0.04, 0.003, 0.04],
                             rtol=1e-12)
  assert significance.holm([0.2]) == [0.2] and significance.holm([]) == []


# Problems whose first characters differ, so a "model" can key its next token on that character
# and on the previous token (causal: position t reads positions 1 and t only).
ORACLE_PROBLEMS = ["12+3=15", "4*2=8", "7+5=12", "9*9=81", "20+1=21"]
# Readout A decodes after '=': 15, 8, 12, 82 (wrong), 21; readout B: 150 (the answer, then a
# digit instead of EOS), 8 8 8 ... (never EOS), 1 (stops early), 81, '' (EOS at once).
ORACLE_DECODES = [["15", "8", "12", "82", "21"], ["150", None, "1", "81", ""]]
ORACLE_VERDICTS = [[1, 1, 1, 0, 1], [0, 0, 0, 1, 0]]
DIGITS_ONLY_VERDICTS = [[1, 1, 1, 0, 1], [1, 1, 0, 1, 0]]  # without the EOS: 150 and 888.. pass


def oracle_logits_fn():
  tok = lambda c: ord(c) + lm.BYTE_OFFSET
  table = np.full((2, lm.VOCAB_SIZE, lm.VOCAB_SIZE), tok("7"), np.int32)  # default: a digit
  for k, decodes in enumerate(ORACLE_DECODES):
    for problem, decode in zip(ORACLE_PROBLEMS, decodes):
      key = tok(problem[0])
      if decode is None:  # the right answer, then itself forever
        table[k, key, tok("=")] = table[k, key, tok("8")] = tok("8")
        continue
      chain = [tok("=")] + [tok(c) for c in decode] + [lm.EOS]
      for prev, nxt in zip(chain[:-1], chain[1:]):
        table[k, key, prev] = nxt
  table = jnp.asarray(table)

  def logits_fn(tokens):  # [N, L] -> [2, N, L, V], one-hot x 10 (no ties)
    nxt = table[:, tokens[:, 1][:, None], tokens]  # [2, N, L]
    return 10.0 * jax.nn.one_hot(nxt, lm.VOCAB_SIZE)
  return logits_fn


def teacher_forced_exact(logits, records):
  from trm_jax import losses, readouts
  labels = jnp.where(records["labels"] == lm.PAD, losses.IGNORE_LABEL_ID, records["labels"])
  return np.asarray(jax.vmap(lambda l: readouts.point_stats(l, l, labels, labels)["exact"])(
      logits)).astype(int)


def test_greedy_until_eos_and_teacher_forced_exact_match_agree_by_hand():
  from trm_jax import lm_eval
  records = lm.arithmetic_records(ORACLE_PROBLEMS, 16)
  logits_fn = oracle_logits_fn()
  starts = lm_eval.prompt_lengths(ORACLE_PROBLEMS)
  np.testing.assert_array_equal(starts, [6, 5, 5, 5, 6])  # BOS 12+3= is 6 tokens
  decode = jax.jit(lambda x, n: lm_eval.greedy_decode(logits_fn, x, n))
  decoded = np.asarray(decode(records["inputs"], starts))
  assert decoded.shape == (2, 5, 16)
  for k in range(2):
    for b, expected in enumerate(ORACLE_DECODES[k]):
      row = decoded[k, b, starts[b] - 1:].tolist()
      if expected is None:  # 8 then 8 ... to the end: no EOS, cut at the last position
        assert row == [ord("8") + 3] * len(row)
      else:
        assert row[:row.index(lm.EOS)] == lm.encode(expected).tolist()
        assert set(row[row.index(lm.EOS) + 1:]) <= {lm.PAD}
      assert set(decoded[k, b, :starts[b] - 1].tolist()) == {lm.PAD}
  greedy = lm_eval.greedy_verdicts(decoded, ORACLE_PROBLEMS).astype(int)
  np.testing.assert_array_equal(greedy, ORACLE_VERDICTS)
  # Teacher forcing on the answer digits and EOS (lm.answer_only) gives the same verdicts...
  logits = logits_fn(jnp.asarray(records["inputs"]))
  np.testing.assert_array_equal(teacher_forced_exact(logits, lm.answer_only(records)),
                                ORACLE_VERDICTS)
  # ... which the digits alone did not: '150' and '888...' passed.
  digits_only = dict(records, labels=np.where(records["answer_mask"], records["labels"], lm.PAD))
  np.testing.assert_array_equal(teacher_forced_exact(logits, digits_only), DIGITS_ONLY_VERDICTS)


def test_greedy_decode_of_an_rlrp_model_follows_its_teacher_forced_argmax():
  from trm_jax import lm_eval
  cfg = model_configs.model_config(
      seq_len=16, vocab_size=lm.VOCAB_SIZE, hidden_size=32, num_heads=2, num_layers=1,
      expansion=2.0, puzzle_emb_ndim=0, puzzle_emb_len=0, scheme="rlrp", halt_max_steps=1,
      compute_dtype="float32", loss_type="softmax")
  cfg.scheme_options = dict(K=3)
  spec = ModelSpec.from_config(cfg)
  params = model_lib.init_params(spec, jax.random.key(0))
  problems = lm.arithmetic_problems(corpus_config(num_test=12))["test"]
  records = lm.answer_only(lm.arithmetic_records(problems, 16))
  logits_fn = lm_eval.step_logits(params, spec)
  trace = np.asarray(logits_fn(jnp.asarray(records["inputs"])))  # teacher-forced [K, n, L, V]
  decoded = np.asarray(lm_eval.greedy_decode(logits_fn, records["inputs"],
                                             lm_eval.prompt_lengths(problems)))
  top2 = np.sort(trace, -1)[..., -2:]
  clear = top2[..., 1] - top2[..., 0] > 1e-3  # argmax not decided by rounding
  starts, checked = lm_eval.prompt_lengths(problems), 0
  for k in range(3):
    for b in range(len(problems)):
      # While the decode has followed the labels, its prefix is the teacher-forced one, so it
      # picks the teacher-forced argmax; the first token always.
      for t in range(starts[b] - 1, 16):
        if not clear[k, b, t]:
          break
        assert decoded[k, b, t] == trace[k, b, t].argmax()
        checked += 1
        if decoded[k, b, t] != records["labels"][b, t] or decoded[k, b, t] == lm.EOS:
          break
  assert checked >= 0.9 * 3 * len(problems)
  verdicts = lm_eval.greedy_verdicts(decoded, problems)
  tf = teacher_forced_exact(jnp.asarray(trace), records).astype(bool)
  rows = clear.all(-1)  # rows without a near-tie anywhere
  np.testing.assert_array_equal(verdicts[rows], tf[rows])


def test_select_on_validation_then_test_only_the_pick(monkeypatch):
  from trm_jax import lm_eval
  # Validation exact at step 1 / K of each run, by hand.
  scores = {("a0", "validation"): (0.50, 0.55), ("a1", "validation"): (0.40, 0.43),
            ("b0", "validation"): (0.60, 0.58), ("b1", "validation"): (0.30, 0.34)}
  calls = []

  def fake_evaluate_run(run, *, split, **_):
    calls.append((run, split))
    first, last = scores.get((run, split), (0.0, 1.0))
    return {"workdir": run, "step": 1, "split": split,
            "arithmetic": {"points": [{"exact_accuracy": first}, {"exact_accuracy": last}],
                           "paired_with_step1": [{"fixed": 0, "broken": 0, "p_value": 1.0},
                                                 {"fixed": 3, "broken": 1, "p_value": 0.625,
                                                  "p_holm": 0.625}]}}
  monkeypatch.setattr(lm_eval, "evaluate_run", fake_evaluate_run)
  candidates = [lm_eval.parse_candidate("A=a0,a1"), lm_eval.parse_candidate("B=b0,b1@7")]
  assert candidates[1] == ("B", [("b0", None), ("b1", 7)])
  load = lambda path, step: path
  # exact: A (0.55 + 0.43) / 2 = 0.49 against B (0.58 + 0.34) / 2 = 0.46 -> A.
  chosen = lm_eval.select_then_test(candidates, load=load, select_by="exact", batch_size=4)
  assert chosen["pick"] == "A"
  np.testing.assert_allclose([c["score"] for c in chosen["candidates"]], [0.49, 0.46])
  assert [c for c in calls if c[1] == "test"] == [("a0", "test"), ("a1", "test")]
  assert "A (pick)" in lm_eval.format_selection(chosen)
  # gain: A (0.05 + 0.03) / 2 = 0.04 against B (-0.02 + 0.04) / 2 = 0.01 -> A; by hand again.
  calls.clear()
  gain = lm_eval.select_then_test(candidates, load=load, select_by="gain", batch_size=4)
  np.testing.assert_allclose([c["score"] for c in gain["candidates"]], [0.04, 0.01], atol=1e-12)
  assert sum(split == "test" for _, split in calls) == 2
  with pytest.raises(ValueError, match="two or more"):
    lm_eval.select_then_test(candidates[:1], load=load, batch_size=4)
  with pytest.raises(ValueError, match="NAME=DIR"):
    lm_eval.parse_candidate("nodirs")


def test_text_windows_split_per_file_and_bad_files_are_named(tmp_path):
  good = tmp_path / "good.txt"
  good.write_text("abcdefghij" * 20, encoding="utf-8")  # 200 bytes: 11 windows of 17
  splits = lm.fluency_records([good], 16, 0.2)
  train, test = splits["train"], splits["test"]
  assert len(train["inputs"]) == 9 and len(test["inputs"]) == 2
  assert len(splits["validation"]["inputs"]) == 0
  # With a validation part: 11 windows = 7 train, then 2 validation, then the 2 test windows.
  three = lm.fluency_records([good], 16, 0.2, 0.2)
  assert [len(three[s]["inputs"]) for s in ("train", "validation", "test")] == [7, 2, 2]
  assert lm.decode(three["validation"]["inputs"][0]) == ("abcdefghij" * 20)[7 * 17:7 * 17 + 16]
  np.testing.assert_array_equal(three["test"]["inputs"], test["inputs"])
  np.testing.assert_array_equal(train["labels"][:, :-1], train["inputs"][:, 1:])
  assert lm.decode(test["inputs"][0]) == ("abcdefghij" * 20)[9 * 17:9 * 17 + 16]
  assert not train["reasoning"].any() and not train["answer_mask"].any()
  latin1 = tmp_path / "latin1.txt"
  latin1.write_bytes("first line\nsecond: caf\u00e9\n".encode("latin-1"))
  with pytest.raises(ValueError, match=r"latin1.txt: not UTF-8 text \(line 2"):
    lm.fluency_records([latin1], 16, 0.2)
  empty = tmp_path / "empty.txt"
  empty.write_text(" \n")
  with pytest.raises(ValueError, match="empty.txt: empty text file"):
    lm.fluency_records([empty], 16, 0.2)
  with pytest.raises(ValueError, match="good.txt: 200 bytes is too short"):
    lm.fluency_records([good], 128, 0.2)
  with pytest.raises(FileNotFoundError, match="missing.txt does not exist"):
    corpus_config(text_files=(str(tmp_path / "missing.txt"),)).files()
  # The shipped sample is valid UTF-8 and small.
  sample = corpus_config().files()
  assert sample and sum(len(p.read_bytes()) for p in sample) < 300_000
  assert all(lm.read_text(p) for p in sample)


def test_routed_stream_ratio_homogeneous_batches_shards_and_resume():
  index = pipeline.RoutedIndex(40, 100, 0.25)
  plan = index.plan(seed=3, global_batch_size=4)
  flags = np.asarray([plan.is_reasoning(j) for j in range(400)])
  assert flags.sum() == 100
  windows = np.lib.stride_tricks.sliding_window_view(flags, 8).sum(-1)
  assert set(windows) == {2}  # evenly interleaved, not just right on average
  records = np.asarray([plan(p) for p in range(400 * 4)]).reshape(400, 4)
  assert ((records < 40) == flags[:, None]).all()  # a batch is one source
  reasoning = records[flags].ravel()
  for epoch in range(len(reasoning) // 40):  # each source: a permutation per pass
    assert sorted(reasoning[40 * epoch:40 * (epoch + 1)]) == list(range(40))

  arrays = {"inputs": np.arange(140)[:, None].repeat(3, 1), "labels": np.ones((140, 3), int),
            "puzzle_identifier": np.zeros(140, int), "reasoning": (np.arange(140) < 40) * 1,
            "answer_mask": np.zeros((140, 3), bool)}
  source = pipeline.ArraySource(arrays)
  make = lambda p, n: iter(pipeline.train_dataset(source, index, seed=3, global_batch_size=4,
                                                  num_epochs=3, process_index=p, process_count=n,
                                                  keys=rlrp.RLRP.batch_keys))
  one, shards = make(0, 1), [make(0, 2), make(1, 2)]
  for j in range(20):
    batch = next(one)
    assert batch["reasoning"].tolist() == [int(flags[j])] * 4
    np.testing.assert_array_equal(batch["inputs"][:, 0], records[j])
    parts = [next(s)["inputs"][:, 0] for s in shards]
    assert sorted(np.concatenate(parts)) == sorted(records[j])
  state = one.get_state()
  expected = next(one)
  resumed = make(0, 1)
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)["inputs"], expected["inputs"])
  with pytest.raises(ValueError, match="needs fluency records"):
    pipeline.RoutedIndex(10, 0, 0.5).plan(0, 2)


# ------------------------------------------------------------------------------ end to end --


def test_runlocal_trains_checkpoints_and_evaluates_per_step(tmp_path):
  from trm_jax import lm_eval, main, runs
  spec_file = importlib.util.spec_from_file_location("exp_rlrp", EXPERIMENTS / "rlrp.py")
  module = importlib.util.module_from_spec(spec_file)
  spec_file.loader.exec_module(module)
  cfg = module.get_config("cpu,runlocal")
  cfg.data.builder_config.num_train, cfg.data.builder_config.num_test = 64, 32
  cfg.train.max_steps, cfg.train.log_every_steps = 4, 1
  cfg.eval.global_batch_size = 32
  result = main.run(cfg, str(tmp_path))
  assert result["count"] == 32 and 0 <= result["exact_accuracy"] <= 1
  assert result["forward_passes_per_example"] == 1 + 4
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train = [l for l in lines if l["kind"] == "train"]
  assert len(train) == 4 and all(np.isfinite(l["lm_loss"]) for l in train)
  assert {f"step{k}_ce_loss" for k in range(1, 5)} <= set(train[0])
  # batches alternate: fluency rows (count 0) then arithmetic rows (count 32)
  assert [l["count"] for l in train] == [0, 32, 0, 32]
  assert "4" in [p.name for p in (tmp_path / "checkpoints").iterdir()]
  run = runs.load(tmp_path)
  out = lm_eval.evaluate_run(run, batch_size=16, max_examples=20)  # validation, the default
  assert out["split"] == "validation"
  assert len(out["arithmetic"]["points"]) == 4 == len(out["fluency"]["points"])
  assert out["arithmetic"]["examples"] == 20
  assert all(np.isfinite(p["margin"]) for p in out["fluency"]["points"])
  assert "| 4 |" in lm_eval.format_steps(out) and "split: validation" in lm_eval.format_steps(out)
  # By hand, from the teacher-forced logits of the first 20 validation problems: the answer CE
  # of each step over the answer digits and the EOS after them.
  data = lm.corpora(run.config.data.builder_config)
  problems = data.problems["validation"][:20]
  assert not set(problems) & set(data.problems["test"])
  spec = ModelSpec.from_config(run.model_config)
  records = lm.answer_only(lm.arithmetic_records(problems, 32))
  logits_fn = lm_eval.step_logits(run.params, spec)
  trace = np.asarray(logits_fn(jnp.asarray(records["inputs"])), np.float64)
  log_p = trace - np.log(np.exp(trace - trace.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
      - trace.max(-1, keepdims=True)
  mask = records["labels"] != lm.PAD
  assert mask.sum() == sum(len(p.split("=")[1]) + 1 for p in problems)  # digits + EOS
  picked = np.take_along_axis(log_p, records["labels"][None, ..., None], -1)[..., 0]
  ce = [-(picked[k] * mask).sum() / mask.sum() for k in range(4)]
  np.testing.assert_allclose([p["ce_labels"] for p in out["arithmetic"]["points"]], ce,
                             rtol=1e-4)
  # Greedy decoding until EOS gives each row's teacher-forced verdict (rows with no near-tie).
  _, exact = lm_eval.evaluate_steps(run.params, spec, records, batch_size=16)
  decoded = lm_eval.greedy_decode(logits_fn, records["inputs"], lm_eval.prompt_lengths(problems))
  top2 = np.sort(trace, -1)[..., -2:]
  clear = ((top2[..., 1] - top2[..., 0] > 1e-3) | ~mask[None]).all(-1)
  assert clear.mean() > 0.8
  np.testing.assert_array_equal(lm_eval.greedy_verdicts(decoded, problems)[clear], exact[clear])
  # Holm over the family of steps 2..4 against step 1, by its definition.
  arith = out["arithmetic"]
  assert arith["holm_family"] == ["step 2 vs step 1", "step 3 vs step 1", "step 4 vs step 1"]
  raw = [pair["p_value"] for pair in arith["paired_with_step1"][1:]]
  assert [pair["p_holm"] for pair in arith["paired_with_step1"][1:]] == significance.holm(raw)
  assert arith["paired_with_step1"][0]["p_holm"] is None
  # Test, with a baseline: other problems, and the baseline test joins the family.
  tested = lm_eval.evaluate_run(run, batch_size=16, max_examples=20, baseline=run, split="test")
  assert tested["split"] == "test" and tested["arithmetic"]["examples"] == 20
  assert tested["arithmetic"]["holm_family"][-1] == "step 4 vs baseline"
  family = [pair["p_value"] for pair in tested["arithmetic"]["paired_with_step1"][1:]]
  family.append(tested["baseline"]["paired"]["p_value"])
  assert tested["baseline"]["paired"]["p_holm"] == significance.holm(family)[-1]
  text = lm_eval.format_steps(tested)
  assert "against the baseline" in text and "split: test" in text
  lm_eval.plot_steps(tested, tmp_path / "lm_eval.png")
  assert (tmp_path / "lm_eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  config = run.config.copy_and_resolve_references()
  config.data.builder_config.seed = 1  # other held-out problems: cannot be paired
  other = dataclasses.replace(run, config=config)
  with pytest.raises(ValueError, match="not those of"):
    lm_eval.evaluate_run(run, batch_size=16, max_examples=20, baseline=other, split="test")
  config = run.config.copy_and_resolve_references()
  config.data.builder_config.num_validation = 0  # a run without a validation split
  with pytest.raises(ValueError, match="holds out no validation split"):
    lm_eval.evaluate_run(dataclasses.replace(run, config=config), batch_size=16)
