"""The RLRP corpora: generated arithmetic (reasoning) and plain text (fluency), as records.

    config.data.builder = 'lm'
    config.data.builder_config:
      name             a label for the run's data (nothing is written to disk)
      seq_len          tokens per record (inputs and next-token labels)
      num_train, num_test   arithmetic problems in each split
      num_validation   arithmetic problems held out for choosing (0: no validation split)
      add_digits, mul_digits  the most digits of each operand of an addition / multiplication
      seed             the arithmetic corpus's seed
      text_files       UTF-8 files or directories of *.txt, local or gs:// ('' or (): the
                       sample shipped in trm_jax/data/text, see its NOTICE.md)
      test_fraction    the tail of each text file held out for evaluation
      validation_fraction  the windows of each text file just before its test tail, held
                       out for choosing (0: none)
      reasoning_ratio  the share of training batches that are arithmetic (pipeline.RoutedIndex)

Tokenizer: bytes. Id 0 is PAD, 1 BOS, 2 EOS, byte b is b + 3 (vocabulary 259). A byte
tokenizer needs no training and no files, never meets an unknown symbol (the fluency text has
non-ASCII characters), and keeps every digit its own token, so the answer span of `123*45=5535`
is exactly its digits; the cost, longer sequences, is small at these lengths.

Records (in-memory arrays; the corpora are generated or read in seconds, so they are rebuilt
from the config rather than stored): `inputs` [L], `labels` [L] (the next token; PAD where
there is none, ignored by the loss), `answer_mask` [L] (labels that are answer digits),
`reasoning` (1 for arithmetic rows) and `puzzle_identifier` (always 0: no puzzle table).
An arithmetic row is one problem, `BOS 123*45=5535 EOS`, padded; a fluency row is a window of
L + 1 consecutive bytes of one file (windows do not overlap; the last `test_fraction` of each
file's windows are the test split, the `validation_fraction` before them the validation split).

Splits: the arithmetic problems are one seeded stream of distinct problems (a+b and b+a are one
problem): the first `num_test` are the test split, the next `num_validation` the validation
split, the rest training; with `num_validation` 0 (the default) the training and test problems
are those of a config without the field. Evaluation (`answer_only`) scores the answer digits
AND the EOS after them: an answer is right only when the model then stops, so teacher-forced
exact match is the verdict of greedy decoding until EOS (`lm_eval.greedy_decode`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
from etils import epath

from trm_jax.data.pipeline import ArraySource, Prepared, RoutedIndex

PAD, BOS, EOS = 0, 1, 2
BYTE_OFFSET = 3
VOCAB_SIZE = 256 + BYTE_OFFSET
SAMPLE_DIR = epath.Path(__file__).parent / "text"
FIELD = "config.data.builder_config"


def encode(text: str) -> np.ndarray:
  return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + BYTE_OFFSET


def decode(ids: Sequence[int]) -> str:
  return bytes(int(i) - BYTE_OFFSET for i in ids if i >= BYTE_OFFSET).decode("utf-8", "replace")


BUILDER = "lm"  # config.data.builder of these corpora


@dataclasses.dataclass(frozen=True)
class CorpusConfig:
  name: str = "lm"
  seq_len: int = 32
  num_train: int = 20_000
  num_test: int = 512
  num_validation: int = 0
  add_digits: int = 3
  mul_digits: int = 2
  seed: int = 0
  text_files: Any = ()
  test_fraction: float = 0.1
  validation_fraction: float = 0.0
  reasoning_ratio: float = 0.5

  @classmethod
  def from_config(cls, values) -> "CorpusConfig":
    if isinstance(values, cls):
      return values
    values = values.to_dict() if hasattr(values, "to_dict") else dict(values)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"{FIELD} has unknown field(s) {unknown} for 'lm'; known: "
                       f"{sorted(known)}")
    config = cls(**values)
    for name in ("seq_len", "num_train", "num_test", "add_digits", "mul_digits"):
      value = getattr(config, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{FIELD}.{name} = {value!r}: must be a positive integer")
    if (not isinstance(config.num_validation, int) or isinstance(config.num_validation, bool)
        or config.num_validation < 0):
      raise ValueError(f"{FIELD}.num_validation = {config.num_validation!r}: must be a "
                       "non-negative integer")
    for name in ("test_fraction", "validation_fraction", "reasoning_ratio"):
      if not 0 <= getattr(config, name) <= 1:
        raise ValueError(f"{FIELD}.{name} = {getattr(config, name)!r}: must be in [0, 1]")
    if config.test_fraction + config.validation_fraction >= 1:
      raise ValueError(f"{FIELD}.test_fraction + validation_fraction = "
                       f"{config.test_fraction + config.validation_fraction!r}: must be below 1 "
                       "(the rest of each text file is for training)")
    return config

  def files(self) -> list[epath.Path]:
    entries = self.text_files
    if isinstance(entries, str):
      entries = [entries] if entries else []
    paths = []
    for entry in (entries or [SAMPLE_DIR]):
      path = epath.Path(entry)
      if path.is_dir():
        found = sorted(path.glob("*.txt"))
        if not found:
          raise FileNotFoundError(f"{FIELD}.text_files: directory {path} holds no *.txt file")
        paths += found
      elif path.is_file():
        paths.append(path)
      else:
        raise FileNotFoundError(f"{FIELD}.text_files: {path} does not exist")
    return paths


# ------------------------------------------------------------------------------ arithmetic --


def _operand(rng: np.random.Generator, max_digits: int) -> int:
  """A number whose digit count is uniform in 1..max_digits (so short and long operands mix)."""
  digits = int(rng.integers(1, max_digits + 1))
  return int(rng.integers(0 if digits == 1 else 10 ** (digits - 1), 10**digits))


SPLITS = ("train", "validation", "test")


def arithmetic_problems(config: CorpusConfig) -> dict[str, list[str]]:
  """{'train', 'validation', 'test'}: problems like '123*45=5535', drawn from `config.seed`. No
  problem repeats, and none is in two splits even with its operands swapped (a+b and b+a are
  one problem). One stream: test first, then validation, then training, so a config with
  `num_validation` 0 has the test and training problems it had before the field existed and
  a validation split leaves the test problems as they are."""
  rng = np.random.default_rng(config.seed)
  wanted = config.num_train + config.num_test + config.num_validation
  seen, problems = set(), []
  for _ in range(50 * wanted):
    if len(problems) == wanted:
      break
    op = "+" if rng.random() < 0.5 else "*"
    a = _operand(rng, config.add_digits if op == "+" else config.mul_digits)
    b = _operand(rng, config.add_digits if op == "+" else config.mul_digits)
    key = (op, min(a, b), max(a, b))
    if key in seen:
      continue
    seen.add(key)
    problems.append(f"{a}{op}{b}={a + b if op == '+' else a * b}")
  if len(problems) < wanted:
    raise ValueError(f"{FIELD}: only {len(problems)} distinct problems found for num_train + "
                     f"num_test + num_validation = {wanted} with add_digits={config.add_digits}, "
                     f"mul_digits={config.mul_digits}; ask for fewer or allow more digits")
  held_out = config.num_test + config.num_validation
  return {"train": problems[held_out:], "validation": problems[config.num_test:held_out],
          "test": problems[:config.num_test]}


def carries(problem: str) -> int:
  """The carries of the addition in a problem like '987+65=1052' (3): column by column from the
  units, a carry wherever the column's digits and the incoming carry reach 10."""
  a, b = (int(x) for x in problem.split("=")[0].split("+"))
  count = carry = 0
  while a or b:
    carry = int(a % 10 + b % 10 + carry >= 10)
    count += carry
    a, b = a // 10, b // 10
  return count


def arithmetic_records(problems: Sequence[str], seq_len: int) -> dict[str, np.ndarray]:
  """One row per problem: BOS problem EOS, inputs/labels shifted by one, the answer digits
  (after '=') marked in `answer_mask`."""
  n = len(problems)
  inputs = np.zeros((n, seq_len), np.int32)
  labels = np.zeros((n, seq_len), np.int32)
  answer = np.zeros((n, seq_len), bool)
  for i, problem in enumerate(problems):
    tokens = np.concatenate([[BOS], encode(problem), [EOS]])
    if len(tokens) - 1 > seq_len:
      raise ValueError(f"{FIELD}.seq_len = {seq_len}: problem {problem!r} needs "
                       f"{len(tokens) - 1} tokens")
    inputs[i, :len(tokens) - 1] = tokens[:-1]
    labels[i, :len(tokens) - 1] = tokens[1:]
    equals = problem.index("=")
    # labels[j] is token j + 1; the answer's digits are tokens equals + 2 .. len - 2.
    answer[i, equals + 1:len(tokens) - 2] = True
  return {"inputs": inputs, "labels": labels, "answer_mask": answer,
          "reasoning": np.ones((n,), np.int32)}


# -------------------------------------------------------------------------------- fluency --


def read_text(path: epath.Path) -> str:
  """The file's text; ValueError naming the file (and the line) when it is empty or not UTF-8."""
  raw = path.read_bytes()
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError as error:
    line = raw[:error.start].count(b"\n") + 1
    raise ValueError(f"{path}: not UTF-8 text (line {line}, byte {error.start}: "
                     f"{error.reason}); {FIELD}.text_files must name UTF-8 files") from None
  if not text.strip():
    raise ValueError(f"{path}: empty text file; {FIELD}.text_files must name files with text")
  return text


def fluency_records(paths: Sequence[epath.Path], seq_len: int, test_fraction: float,
                    validation_fraction: float = 0.0) -> dict[str, dict[str, np.ndarray]]:
  """{'train', 'validation', 'test'}: windows of seq_len + 1 bytes; each file's last windows
  are its test part, the ones just before them its validation part."""
  splits = {name: [] for name in SPLITS}
  for path in paths:
    tokens = encode(read_text(path))
    windows = tokens[:len(tokens) // (seq_len + 1) * (seq_len + 1)].reshape(-1, seq_len + 1)
    num_test = int(round(len(windows) * test_fraction))
    num_validation = int(round(len(windows) * validation_fraction))
    train_end = len(windows) - num_test - num_validation
    if (train_end < 1 or (test_fraction > 0 and num_test < 1)
        or (validation_fraction > 0 and num_validation < 1)):
      raise ValueError(f"{path}: {len(tokens)} bytes is too short for train, validation and "
                       f"test windows of {FIELD}.seq_len + 1 = {seq_len + 1} bytes")
    splits["train"].append(windows[:train_end])
    splits["validation"].append(windows[train_end:len(windows) - num_test])
    splits["test"].append(windows[len(windows) - num_test:])
  out = {}
  for name in SPLITS:
    windows = np.concatenate(splits[name]) if splits[name] else np.zeros((0, seq_len + 1))
    windows = windows.astype(np.int32)
    n = len(windows)
    out[name] = {"inputs": windows[:, :-1], "labels": windows[:, 1:],
                 "answer_mask": np.zeros((n, seq_len), bool),
                 "reasoning": np.zeros((n,), np.int32)}
  return out


# ------------------------------------------------------------------------------- datasets --


def _source(*parts: dict[str, np.ndarray]) -> ArraySource:
  arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  arrays["puzzle_identifier"] = np.zeros((len(arrays["inputs"]),), np.int32)
  return ArraySource(arrays)


@dataclasses.dataclass
class Corpora:
  arithmetic_train: dict[str, np.ndarray]
  arithmetic_test: dict[str, np.ndarray]
  fluency_train: dict[str, np.ndarray]
  fluency_test: dict[str, np.ndarray]
  problems: dict[str, list[str]]  # the arithmetic problems' texts of each split
  # Empty records (0 rows) when the config holds out no validation problems / windows.
  arithmetic_validation: dict[str, np.ndarray]
  fluency_validation: dict[str, np.ndarray]

  def split(self, name: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(arithmetic, fluency) records of split `name` ('train', 'validation' or 'test')."""
    if name not in SPLITS:
      raise ValueError(f"split {name!r}: must be one of {SPLITS}")
    return getattr(self, f"arithmetic_{name}"), getattr(self, f"fluency_{name}")


def corpora(builder_config) -> Corpora:
  config = CorpusConfig.from_config(builder_config)
  problems = arithmetic_problems(config)
  fluency = fluency_records(config.files(), config.seq_len, config.test_fraction,
                            config.validation_fraction)
  arithmetic = {name: arithmetic_records(problems[name], config.seq_len) for name in SPLITS}
  return Corpora(arithmetic["train"], arithmetic["test"], fluency["train"], fluency["test"],
                 problems, arithmetic["validation"], fluency["validation"])


def answer_only(records: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Arithmetic records with every label but the answer digits and the EOS right after them
  set to PAD (ignored): exact match then needs the answer and the stop, so an answer followed
  by more digits is wrong, as it is for greedy decoding until EOS."""
  keep = records["answer_mask"] | (records["labels"] == EOS)  # EOS: only after the answer
  return dict(records, labels=np.where(keep, records["labels"], PAD))


def prepare(data_cfg):
  """`pipeline.Prepared` for builder 'lm': the training stream routes whole batches to the
  arithmetic or the text records (ratio `reasoning_ratio`); the test split (and the validation
  split, when `num_validation` > 0; else None) is held-out arithmetic supervised on its answer
  digits and EOS only (`answer_only`), so the run's evaluation table reads answer exact match
  at step K (per refinement step: trm_jax/lm_eval.py)."""
  config = CorpusConfig.from_config(data_cfg.builder_config)
  data = corpora(config)
  index = RoutedIndex(len(data.arithmetic_train["inputs"]), len(data.fluency_train["inputs"]),
                      config.reasoning_ratio)
  metadata = {"seq_len": config.seq_len, "vocab_size": VOCAB_SIZE, "num_puzzle_identifiers": 1}
  validation = (_source(answer_only(data.arithmetic_validation)) if config.num_validation
                else None)
  return Prepared(_source(data.arithmetic_train, data.fluency_train), index,
                  _source(answer_only(data.arithmetic_test)), metadata, validation=validation)
