"""An experiment config checked and completed before anything is built: its training,
evaluation and execution fields, its batches against the mesh, the model config with the
dataset's shapes, and the data folders that default to the workdir."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import ml_collections
from etils import epath

from trm_jax import inference
from trm_jax import model as model_lib
from trm_jax import sharding as sharding_lib
from trm_jax.config import ModelSpec
from trm_jax.data import datasets
from trm_jax.kernels import attention as kernels_attention
from trm_jax.kernels import cpu_gemm, execution
from trm_jax.kernels import matmul as kernels_matmul

OPTIMIZERS = ("adam_atan2", "adamw")


def validate_experiment(cfg: ml_collections.ConfigDict) -> None:
  """Checks the training, evaluation and execution fields; raises ValueError naming the
  field."""
  def fail(field, why):
    section, name = field.split(".")
    raise ValueError(f"config field '{field}' = {cfg[section][name]!r}: {why}")

  positive_ints = ["train.global_batch_size", "train.epochs", "train.eval_interval",
                   "eval.global_batch_size", "train.log_every_steps"]
  for field in positive_ints:
    section, name = field.split(".")
    value = cfg[section][name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      fail(field, "must be a positive integer")
  for field in ["train.lr", "train.puzzle_emb_lr"]:
    section, name = field.split(".")
    if not cfg[section][name] > 0:
      fail(field, "must be positive")
  for field in ["train.weight_decay", "train.puzzle_emb_weight_decay", "train.grad_clip_norm",
                "train.lr_warmup_steps", "train.checkpoint_every_steps",
                "train.keep_best_checkpoints"]:
    section, name = field.split(".")
    if cfg[section][name] < 0:
      fail(field, "must be non-negative")
  for field in ["train.beta1", "train.beta2", "train.ema_rate", "train.lr_min_ratio"]:
    section, name = field.split(".")
    if not 0 <= cfg[section][name] <= 1:
      fail(field, "must be in [0, 1]")
  if cfg.train.keep_checkpoints < 1:
    fail("train.keep_checkpoints", "must be at least 1")
  if cfg.train.get("optimizer", "adam_atan2") not in OPTIMIZERS:
    fail("train.optimizer", f"must be one of {OPTIMIZERS}")
  max_steps = cfg.train.get("max_steps", 0)
  if not isinstance(max_steps, int) or isinstance(max_steps, bool) or max_steps < 0:
    fail("train.max_steps", "must be a non-negative integer (0: train.epochs decides)")
  if cfg.train.eval_interval > cfg.train.epochs:
    fail("train.eval_interval", f"exceeds train.epochs={cfg.train.epochs}")
  profile_steps = cfg.train.get("profile_steps", ())
  if not isinstance(profile_steps, (list, tuple)) or not all(
      isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in profile_steps):
    fail("train.profile_steps", "must be a list of training steps (positive integers)")
  inference.Strategy.from_config(cfg.eval)
  execution_settings(cfg)


def execution_settings(cfg: ml_collections.ConfigDict) -> execution.Settings:
  """The kernels the run's programs use (`config.execution`; absent: the defaults), checked;
  raises ValueError naming the field, e.g. a CPU kernel this machine cannot run."""
  values = cfg.get("execution", ml_collections.ConfigDict()).to_dict()
  known = [field.name for field in dataclasses.fields(execution.Settings)]
  if set(values) - set(known):
    raise ValueError(f"config section 'execution': unknown field(s) "
                     f"{sorted(set(values) - set(known))}; known fields: {known}")
  settings = execution.Settings(**values)

  def fail(name, why):
    raise ValueError(f"config field 'execution.{name}' = {getattr(settings, name)!r}: {why}")

  if settings.matmul not in kernels_matmul.IMPLS:
    fail("matmul", f"must be one of {kernels_matmul.IMPLS}")
  # Asked only where the kernel would run (one CPU device): builds it on first use.
  if (settings.matmul in cpu_gemm.ISAS and kernels_matmul.single_cpu_device()
      and not cpu_gemm.available(settings.matmul)):
    fail("matmul", f"the {settings.matmul} kernel is unavailable here: "
                   f"{cpu_gemm.unavailable_reason(settings.matmul)}")
  if settings.attention not in kernels_attention.IMPLS:
    fail("attention", f"must be one of {kernels_attention.IMPLS}")
  return settings


def moved_flag(argv: list[str]) -> str | None:
  """Why a command line's `--config.model.matmul` (or `.attention`) no longer works, naming
  its new place; None when it has none. (The config flag would only say that the model has no
  such field.)"""
  for arg in argv:
    key = arg.split("=", 1)[0]
    for name in execution.FORMER_MODEL_FIELDS:
      if key == f"--config.model.{name}":
        return (f"{key} moved to --config.execution.{name}: the kernel choice is an execution "
                "setting, not part of the model")
  return None


def check_batches_fit(cfg: ml_collections.ConfigDict, mesh) -> None:
  """Training and evaluation batches are split over every device of the mesh and every
  process: each global batch size must divide evenly (checked before anything compiles)."""
  devices, processes = mesh.devices.size, jax.process_count()
  for field in ("train.global_batch_size", "eval.global_batch_size"):
    section, name = field.split(".")
    value = cfg[section][name]
    if value % devices or value % processes:
      raise ValueError(f"config field '{field}' = {value}: must be a multiple of the mesh's "
                       f"{devices} devices and of the {processes} processes (batches are "
                       "split over both)")


def check_batch_keys(spec: ModelSpec, data) -> None:
  """The scheme's `batch_keys` are fields of the dataset's records (checked before anything
  compiles)."""
  keys = model_lib.scheme_of(spec).batch_keys
  have = set(data.train[0]) if keys and len(data.train) else set()
  missing = [k for k in keys if k not in have]
  if missing:
    raise ValueError(f"model config field 'scheme' = {spec.scheme!r}: the scheme reads batch "
                     f"field(s) {missing}, which the dataset's records do not have (they have "
                     f"{sorted(have)})")


# Model fields the dataset sets (its metadata holds them under the same names).
DATA_SHAPE_FIELDS = ("seq_len", "vocab_size", "num_puzzle_identifiers")


def model_config_for(cfg: ml_collections.ConfigDict, metadata: dict[str, Any]):
  """The experiment's model config with the dataset's shapes filled in (the puzzle table
  rounded up so that the mesh can split it: `sharding.table_rows`)."""
  model_cfg = ml_collections.ConfigDict(cfg.model.to_dict())
  for name in DATA_SHAPE_FIELDS:
    model_cfg[name] = int(metadata[name])
  model_cfg.num_puzzle_identifiers = sharding_lib.table_rows(model_cfg.num_puzzle_identifiers)
  ModelSpec.from_config(model_cfg)
  return model_cfg


def data_folders(cfg: ml_collections.ConfigDict, workdir: str) -> tuple[str, ...]:
  """Sets the data folders left empty to folders of the workdir: data.data_dir to
  <workdir>/tfds and, for generated data, data.manual_dir to <workdir>/raw; returns the fields
  it set. Raises ValueError naming data.data_dir where TFDS cannot keep a dataset (a bucket:
  `datasets.check_data_dir`)."""
  in_workdir = ()
  workdir_path = epath.Path(workdir)
  if not cfg.data.data_dir:
    cfg.data.data_dir = str(workdir_path / "tfds")
    in_workdir += ("data.data_dir",)
  if cfg.data.get("generate") and cfg.data.generate.get("kind") and not cfg.data.manual_dir:
    cfg.data.manual_dir = str(workdir_path / "raw")
    in_workdir += ("data.manual_dir",)
  datasets.check_data_dir(cfg.data, defaulted="data.data_dir" in in_workdir)
  return in_workdir


@dataclasses.dataclass(frozen=True)
class Schedule:
  """The run's length in steps: `train.epochs` (capped by `train.max_steps`) over the data's
  epoch, evaluations every `train.eval_interval` epochs, checkpoints at each evaluation unless
  `train.checkpoint_every_steps` says otherwise."""

  total_steps: int
  eval_every: int
  save_every: int

  @classmethod
  def of(cls, cfg: ml_collections.ConfigDict, epoch_length: int) -> "Schedule":
    steps_per_epoch = epoch_length / cfg.train.global_batch_size
    total = max(1, int(cfg.train.epochs * steps_per_epoch))
    if cfg.train.get("max_steps", 0):
      total = min(total, cfg.train.max_steps)
    eval_every = max(1, int(cfg.train.eval_interval * steps_per_epoch))
    return cls(total, eval_every, cfg.train.checkpoint_every_steps or eval_every)

  def is_eval_step(self, step: int) -> bool:
    """Every `eval_every` steps and at the last step; a periodic evaluation that rounding of the
    steps per epoch would put within half an interval of the end is left to the final one."""
    return step == self.total_steps or (
        step % self.eval_every == 0 and self.total_steps - step >= self.eval_every / 2)

  def describe(self, global_batch: int) -> str:
    return (f"{self.total_steps:,} steps of {global_batch} examples, evaluation every "
            f"{self.eval_every:,} steps, checkpoint every {self.save_every:,}")
