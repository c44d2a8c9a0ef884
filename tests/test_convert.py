import jax
import numpy as np
import pytest

import trm_jax
from trm_jax import config, convert
from trm_jax.nn import swiglu_width

from conftest import load_official


def official_layout(cfg) -> dict[str, tuple[int, ...]]:
  """Key -> shape of the official TRM state_dict, written down from the official model code."""
  D, V, P = cfg.hidden_size, cfg.vocab_size, cfg.puzzle_emb_len or -(-cfg.puzzle_emb_ndim // cfg.hidden_size)
  keys = {
      "inner.embed_tokens.embedding_weight": (V, D),
      "inner.lm_head.weight": (V, D),
      "inner.q_head.weight": (2, D),
      "inner.q_head.bias": (2,),
      "inner.H_init": (D,),
      "inner.L_init": (D,),
      "inner.puzzle_emb.weights": (cfg.num_puzzle_identifiers, cfg.puzzle_emb_ndim),
  }
  if cfg.pos_encodings == "learned":
    keys["inner.embed_pos.embedding_weight"] = (cfg.seq_len + P, D)
  inter = swiglu_width(D, cfg.expansion)
  for i in range(cfg.num_layers):
    layer = f"inner.L_level.layers.{i}."
    if cfg.mlp_t:
      L = cfg.seq_len + P
      t_inter = swiglu_width(L, cfg.expansion)
      keys[layer + "mlp_t.gate_up_proj.weight"] = (2 * t_inter, L)
      keys[layer + "mlp_t.down_proj.weight"] = (L, t_inter)
    else:
      keys[layer + "self_attn.qkv_proj.weight"] = (3 * D, D)
      keys[layer + "self_attn.o_proj.weight"] = (D, D)
    keys[layer + "mlp.gate_up_proj.weight"] = (2 * inter, D)
    keys[layer + "mlp.down_proj.weight"] = (D, inter)
  return keys


def random_state_dict(cfg, seed=0):
  rng = np.random.default_rng(seed)
  return {k: rng.standard_normal(s).astype(np.float32) for k, s in official_layout(cfg).items()}


@pytest.mark.parametrize("overrides", [{}, {"mlp_t": True, "pos_encodings": "none"},
                                       {"pos_encodings": "learned"}])
def test_every_official_key_maps(overrides):
  cfg = config.tiny()
  cfg.update(overrides)
  sd = random_state_dict(cfg)
  params = convert.from_official_state_dict(sd, cfg)
  flat = convert._flatten(params)
  assert len(flat) == len(sd)
  chex_shapes = jax.tree.map(lambda x: x.shape, params)
  assert chex_shapes == jax.tree.map(lambda x: x.shape, trm_jax.abstract_params(cfg))
  # Linear weights are transposed ([out, in] -> [in, out]); embeddings are not.
  np.testing.assert_array_equal(params["lm_head"]["kernel"], sd["inner.lm_head.weight"].T)
  np.testing.assert_array_equal(params["embed_tokens"], sd["inner.embed_tokens.embedding_weight"])
  np.testing.assert_array_equal(params["y_init"], sd["inner.H_init"])
  np.testing.assert_array_equal(params["z_init"], sd["inner.L_init"])


# The official config/arch/trm.yaml as its trainer fills it in for Sudoku-Extreme with mlp_t
# (dataset fields from the data's metadata, rms_norm_eps / rope_theta from the pydantic model).
OFFICIAL_SUDOKU_MLP_ARCH = dict(
    seq_len=81, vocab_size=11, num_puzzle_identifiers=1, batch_size=768, H_cycles=3, L_cycles=6,
    H_layers=0, L_layers=2, hidden_size=512, num_heads=8, expansion=4.0, puzzle_emb_ndim=512,
    pos_encodings="none", forward_dtype="bfloat16", mlp_t=True, puzzle_emb_len=16,
    halt_max_steps=16, halt_exploration_prob=0.1, no_ACT_continue=True, rms_norm_eps=1e-5,
    rope_theta=10000.0)


def test_official_arch_round_trips_the_official_recipe():
  cfg = convert.model_config_from_official(
      dict(OFFICIAL_SUDOKU_MLP_ARCH, name="recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1"))
  assert cfg.num_layers == 2 and cfg.compute_dtype == "bfloat16"
  want = {k: v for k, v in OFFICIAL_SUDOKU_MLP_ARCH.items() if k != "batch_size"}
  want["name"] = "recursive_reasoning.trm@TinyRecursiveReasoningModel_ACTV1"
  assert convert.official_arch(cfg) == want
  assert convert.official_arch(config.sudoku_mlp_t()) == want  # our preset is that recipe


@pytest.mark.parametrize("field, value", [("scheme", "other"), ("param_dtype", "bfloat16")])
def test_official_arch_refuses_what_the_official_model_cannot_be(field, value):
  cfg = config.sudoku_mlp_t()
  cfg[field] = value
  with pytest.raises(ValueError, match=field):
    convert.official_arch(cfg)


def test_official_dis_arch_round_trips():
  arch = convert.official_arch(_dis_model())
  assert arch["name"].endswith("@TinyRecursiveReasoningModel_ACTV5")
  assert convert.model_config_from_official(arch).to_dict() == _dis_model().to_dict()


def _dis_model():
  cfg = config.sudoku_attention()
  cfg.scheme, cfg.H_cycles, cfg.L_cycles, cfg.halt_max_steps = "dis", 1, 2, 6
  return cfg


def test_fixture_state_dict_is_the_official_layout():
  cfg, sd, _ = load_official("official_att_rope_fp32.npz")
  layout = official_layout(cfg)
  assert {k: v.shape for k, v in sd.items()} == layout


def test_training_script_prefixes_are_stripped():
  cfg = config.tiny()
  sd = {"_orig_mod.model." + k: v for k, v in random_state_dict(cfg).items()}
  convert.from_official_state_dict(sd, cfg)


def test_unknown_key_is_named():
  cfg = config.tiny()
  sd = random_state_dict(cfg)
  sd["inner.L_level.layers.0.self_attn.rotary.weight"] = np.zeros(3)
  with pytest.raises(ValueError, match=r"'inner\.L_level\.layers\.0\.self_attn\.rotary\.weight'.*unknown"):
    convert.from_official_state_dict(sd, cfg)


def test_key_of_another_architecture_is_named():
  cfg = config.tiny()
  sd = random_state_dict(cfg)
  sd["inner.embed_pos.embedding_weight"] = np.zeros((20, 64), np.float32)
  with pytest.raises(ValueError, match="embed_pos.*no counterpart"):
    convert.from_official_state_dict(sd, cfg)


def test_missing_key_is_named():
  cfg = config.tiny()
  sd = random_state_dict(cfg)
  del sd["inner.H_init"]
  del sd["inner.L_level.layers.1.mlp.down_proj.weight"]
  with pytest.raises(ValueError, match=r"missing(?=.*inner\.H_init)(?=.*inner\.L_level\.layers\.1\.mlp\.down_proj\.weight)"):
    convert.from_official_state_dict(sd, cfg)


def test_wrong_shape_is_named():
  cfg = config.tiny()
  sd = random_state_dict(cfg)
  sd["inner.puzzle_emb.weights"] = np.zeros((3, 64), np.float32)
  with pytest.raises(ValueError, match=r"'inner\.puzzle_emb\.weights' has shape \(3, 64\).*\(8, 64\)"):
    convert.from_official_state_dict(sd, cfg)


def test_saved_params_round_trip(tmp_path):
  cfg = config.tiny()
  params = convert.from_official_state_dict(random_state_dict(cfg), cfg)
  convert.save_params(params, tmp_path / "ckpt")
  restored = convert.load_params(tmp_path / "ckpt", cfg)
  jax.tree.map(np.testing.assert_array_equal, restored, params)


def test_cli_converts_a_pt_file(tmp_path):
  torch = pytest.importorskip("torch", reason="torch is optional; the .pt path needs it")
  cfg = config.tiny()
  sd = {"_orig_mod.model." + k: torch.from_numpy(v) for k, v in random_state_dict(cfg).items()}
  sd["_orig_mod.model.inner.H_init"] = sd["_orig_mod.model.inner.H_init"].to(torch.bfloat16)
  torch.save(sd, tmp_path / "step_1.pt")
  convert.cli(["--checkpoint", str(tmp_path / "step_1.pt"), "--preset", "tiny",
               "--out", str(tmp_path / "out")])
  restored = convert.load_params(tmp_path / "out", cfg)
  np.testing.assert_array_equal(restored["y_init"], sd["_orig_mod.model.inner.H_init"].float().numpy())
