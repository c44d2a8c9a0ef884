"""The official puzzle CSV layout (`source,question,answer,rating`), shared by Sudoku and
Maze-Hard: raw rows with their file lines, fixed-length checks, character tables to codes and
back, ratings. numpy and the standard library only."""

from __future__ import annotations

import csv
import dataclasses
import os
from typing import Iterable, Iterator, Sequence

import numpy as np
from etils import epath

from trm_jax import paths

CSV_HEADER = ("source", "question", "answer", "rating")

PathLike = str | os.PathLike


@dataclasses.dataclass(frozen=True, eq=False)
class CsvRows:
  """Raw columns of a puzzle CSV; `lines[i]` is the 1-based file line where row i starts."""

  path: epath.Path
  sources: list[str]
  questions: list[str]
  answers: list[str]
  ratings: list[str]
  lines: list[int]

  def error(self, row: int, message: str) -> ValueError:
    return ValueError(f"{self.path}, line {self.lines[row]}: {message}")


def read_csv_rows(path: PathLike) -> CsvRows:
  """Reads a `source,question,answer,rating` CSV, checking the header and the column count."""
  path = epath.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"puzzle CSV not found: {path}")
  columns = ([], [], [], [])
  lines = []
  # -sig: tolerate a byte-order mark
  with paths.open_text(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != CSV_HEADER:
      raise ValueError(f"{path}, line 1: expected the header {','.join(CSV_HEADER)}, "
                       f"got {','.join(header or [])!r}")
    for row in reader:
      if not row:  # a blank line, e.g. at the end of the file
        continue
      if len(row) != len(CSV_HEADER):
        raise ValueError(f"{path}, line {reader.line_num}: expected {len(CSV_HEADER)} columns "
                         f"({','.join(CSV_HEADER)}), got {len(row)}")
      for column, value in zip(columns, row):
        column.append(value)
      lines.append(reader.line_num)
  if not lines:
    raise ValueError(f"{path}: no puzzles after the header")
  return CsvRows(path, *columns, lines)


def question_rows(lines: Iterable[str]) -> Iterator[tuple[int, str | None, str | None]]:
  """(line, question, problem) for each row of a puzzle CSV's lines: the question column, or
  what is wrong with the row (the header, the column count) and None. For readers that go on
  past a bad row; `read_csv_rows` stops at the first."""
  reader = csv.reader(lines)
  header = next(reader, None)
  if header is None or tuple(h.strip().lstrip("\ufeff") for h in header) != CSV_HEADER:
    yield 1, None, f"expected the header {','.join(CSV_HEADER)}, got {','.join(header or [])!r}"
  for row in reader:
    if not row:
      continue
    if len(row) != len(CSV_HEADER):
      yield reader.line_num, None, (f"expected {len(CSV_HEADER)} columns "
                                    f"({','.join(CSV_HEADER)}), got {len(row)}")
    else:
      yield reader.line_num, row[CSV_HEADER.index("question")], None


def check_lengths(rows: CsvRows, strings: Sequence[str], column: str, length: int) -> None:
  lengths = np.fromiter(map(len, strings), np.int64, count=len(strings))
  bad = np.flatnonzero(lengths != length)
  if bad.size:
    i = int(bad[0])
    raise rows.error(i, f"{column} has {lengths[i]} characters, expected {length}")


def encode_chars(rows: CsvRows, strings: Sequence[str], column: str, table: dict[str, int],
                 length: int) -> np.ndarray:
  """Maps equal-length strings through `table` to uint8 [N, length]; names the first bad char."""
  lut = np.full(256, 255, np.uint8)
  for char, code in table.items():
    lut[ord(char)] = code
  # "replace" keeps one byte per character, so a non-ASCII character becomes an invalid '?'.
  data = np.frombuffer("".join(strings).encode("ascii", "replace"), np.uint8)
  codes = lut[data].reshape(len(strings), length)
  bad = np.argwhere(codes == 255)
  if bad.size:
    i, j = (int(v) for v in bad[0])
    allowed = "".join(sorted(table, key=lambda c: (table[c], c)))
    raise rows.error(i, f"{column} has the character {strings[i][j]!r} at position {j + 1}; "
                        f"allowed: {allowed!r}")
  return codes


def parse_ratings(rows: CsvRows) -> np.ndarray:
  try:
    return np.asarray(rows.ratings).astype(np.float32)
  except ValueError:
    for i, rating in enumerate(rows.ratings):
      try:
        float(rating)
      except ValueError:
        raise rows.error(i, f"rating {rating!r} is not a number") from None
    raise


def format_rating(rating: float) -> str:
  # Integral ratings (the official backtrack counts) stay integers, so int() can parse them.
  return str(int(rating)) if float(rating).is_integer() else repr(float(rating))


def write_csv_rows(path: PathLike, sources: Sequence[str] | None, questions: Sequence[str],
                   answers: Sequence[str], ratings: np.ndarray) -> None:
  if sources is None:
    sources = [""] * len(questions)
  with paths.open_text(epath.Path(path), "w", newline="", encoding="utf-8") as f:
    writer = csv.writer(f, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    writer.writerows(zip(sources, questions, answers, map(format_rating, ratings)))


def decode_chars(codes_NxL: np.ndarray, charset: str) -> list[str]:
  """Inverse of `encode_chars` for a charset indexed by code."""
  lut = np.frombuffer(charset.encode("ascii"), np.uint8)
  length = codes_NxL.shape[1]
  data = lut[codes_NxL].tobytes().decode("ascii")
  return [data[i:i + length] for i in range(0, len(data), length)]
