import pytest

from trm_jax import config
from trm_jax.config import ModelSpec


@pytest.mark.parametrize("name", sorted(config.PRESETS))
def test_presets_validate(name):
  ModelSpec.from_config(config.PRESETS[name]())


@pytest.mark.parametrize("field,value", [
    ("pos_encodings", "alibi"),
    ("num_heads", 7),
    ("hidden_size", 0),
    ("halt_exploration_prob", 1.5),
    ("compute_dtype", "int8"),
    ("loss_type", "hinge"),
    ("remat", "sometimes"),
    ("puzzle_emb_ndim", 10_000),
])
def test_invalid_value_names_the_field(field, value):
  cfg = config.tiny()
  cfg[field] = value
  with pytest.raises(ValueError, match=f"'{field}'"):
    ModelSpec.from_config(cfg)


def test_an_unknown_scheme_or_option_names_the_field_when_the_scheme_is_bound():
  from trm_jax import model
  cfg = config.tiny()
  cfg.scheme = "does_not_exist"
  spec = ModelSpec.from_config(cfg)  # the spec is structure only; the scheme checks its own
  with pytest.raises(ValueError, match="'scheme' = 'does_not_exist': must be one of the "
                                       r"registered schemes \['dis', 'hrm', 'rlrp', .*'trm'"):
    model.scheme_of(spec)
  cfg.scheme = "dis"
  cfg.scheme_options = {"input": "label"}
  with pytest.raises(ValueError, match=r"'scheme_options.input' = 'label': must be one of "
                                       r"\('prediction', 'puzzle'\)"):
    model.scheme_of(cfg)
  cfg.scheme_options = {"cfg_dropout": 1.5}
  with pytest.raises(ValueError, match=r"'scheme_options.cfg_dropout' = 1.5: must be a number "
                                       r"in \[0, 1\]"):
    model.scheme_of(cfg)


def test_scheme_names_cannot_be_taken_twice_and_option_types_are_kept_apart():
  from trm_jax import model, recursion, schemes
  with pytest.raises(ValueError, match=r"'dis' is already registered \(trm_jax.schemes.dis.DIS\)"):
    @schemes.register
    class Mine(recursion.Scheme):  # a user's scheme under a built-in's name, before any lookup
      name = "dis"
  cfg = config.model_config(seq_len=8, vocab_size=16, puzzle_emb_ndim=0, puzzle_emb_len=0,
                            scheme="rlrp", halt_max_steps=1)
  cfg.scheme_options = {"K": 1, "step_embed": 1}  # 0/1 for a bool is taken as False/True
  assert model.scheme_of(cfg).opts.step_embed is True
  cfg.scheme_options = {"K": True}  # equal to K=1 (and hashed alike), but not a step count
  with pytest.raises(ValueError, match="'scheme_options.K' = True: must be a positive integer"):
    model.scheme_of(cfg)


def test_unknown_and_missing_fields():
  with pytest.raises(ValueError, match="unknown field.*'hiden_size'"):
    ModelSpec.from_config({"seq_len": 4, "vocab_size": 3, "hiden_size": 8})
  with pytest.raises(ValueError, match="missing required.*seq_len"):
    ModelSpec.from_config({"vocab_size": 3})


def test_prefix_len_follows_official_ceil_rule():
  spec = ModelSpec.from_config(config.model_config(seq_len=9, vocab_size=5, hidden_size=64,
                                                   num_heads=4, puzzle_emb_ndim=100,
                                                   puzzle_emb_len=0))
  assert spec.prefix_len == 2 and spec.total_len == 11


def test_parse_field_value_follows_the_replaced_fields_type():
  from trm_jax.config import parse_field_value
  assert parse_field_value("off", True) is False and parse_field_value("Yes", False) is True
  assert parse_field_value("8", 2) == 8 and isinstance(parse_field_value("8", 2.0), float)
  assert parse_field_value("1e-3", 0.5) == 1e-3
  assert parse_field_value("64", "a string") == "64"  # a str field stays a string
  assert parse_field_value("(1, 2)", None) == (1, 2) and parse_field_value("abc", None) == "abc"
  with pytest.raises(ValueError, match="expected a boolean"):
    parse_field_value("maybe", True)
  with pytest.raises(ValueError):
    parse_field_value("2.5", 3)


def test_kernel_choices_are_not_model_fields():
  """matmul and attention are execution settings (trm_jax/kernels/execution.py): a model config
  that still sets one is refused, naming it."""
  with pytest.raises(ValueError, match=r"unknown field.*'matmul'"):
    ModelSpec.from_config(config.model_config(seq_len=4, vocab_size=4, matmul="xla"))
  assert not {"matmul", "attention"} & set(config.model_config(seq_len=4, vocab_size=4))


def test_execution_settings_are_checked_naming_the_field(monkeypatch):
  import ml_collections
  from trm_jax import experiment
  from trm_jax.kernels import cpu_gemm, execution
  settings = lambda **values: experiment.execution_settings(
      ml_collections.ConfigDict(dict(execution=values)))
  assert settings(matmul="xla", attention="auto") == execution.Settings(matmul="xla")
  assert experiment.execution_settings(ml_collections.ConfigDict()) == execution.Settings()
  with pytest.raises(ValueError, match=r"'execution.matmul' = 'mkl': must be one of \("):
    settings(matmul="mkl")
  with pytest.raises(ValueError, match=r"'execution.attention' = 'flash': must be one of \("):
    settings(attention="flash")
  with pytest.raises(ValueError, match=r"section 'execution': unknown field\(s\) \['matmull'\]"):
    settings(matmull="xla")
  monkeypatch.setattr(cpu_gemm, "available", lambda isa: False)
  monkeypatch.setattr(cpu_gemm, "unavailable_reason", lambda isa: "this CPU lacks amx_bf16")
  with pytest.raises(ValueError, match="config field 'execution.matmul' = 'amx': the amx kernel "
                                       "is unavailable here: this CPU lacks amx_bf16"):
    settings(matmul="amx")


def test_a_moved_command_line_flag_names_its_new_place():
  from trm_jax import experiment
  assert experiment.moved_flag(["main", "--config.execution.matmul=xla"]) is None
  assert experiment.moved_flag(["main", "--config.model.matmul_x=1"]) is None
  for flag in ("--config.model.matmul=xla", "--config.model.attention"):
    message = experiment.moved_flag(["main", "--workdir=/tmp/x", flag])
    name = flag.split("=")[0].rsplit(".", 1)[1]
    assert f"moved to --config.execution.{name}" in message


def test_a_config_saved_with_the_kernels_in_its_model_loads():
  """Runs saved before issue 29 hold matmul and attention in their model config: read back,
  they are the run's execution settings, and the model config validates."""
  from trm_jax import runs
  model = config.tiny().to_dict()
  saved = {"model": dict(model, matmul="xla", attention="auto"), "train": {"lr": 0.1}}
  upgraded = runs.upgrade_config(saved)
  assert upgraded == {"model": model, "train": {"lr": 0.1},
                      "execution": {"matmul": "xla", "attention": "auto"}}
  ModelSpec.from_config(upgraded["model"])
  assert runs.upgrade_config(upgraded) == upgraded  # today's layout stays as it is


@pytest.mark.parametrize("first", ["dis", "hrm", "rlrp", "trm", "trm_singlez"])
def test_any_built_in_scheme_module_can_be_imported_first(first):
  """Importing one scheme module first (as a test or a user's code may) registers it and, on
  the first lookup, every other built-in: discovery must not re-enter a module mid-import."""
  import subprocess
  import sys
  code = (f"from trm_jax.schemes import {first}\n"
          "from trm_jax import schemes\n"
          "print(schemes.names())")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120, env={**__import__("os").environ, "JAX_PLATFORMS": "cpu"})
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == "['dis', 'hrm', 'rlrp', 'trm', 'trm_singlez']"
