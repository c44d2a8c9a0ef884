"""Paths of workdirs, checkpoints, outputs and data files: local, or on an object store.

Every such path is opened through `etils.epath` (as Orbax and TFDS do), so a workdir may be a
bucket (`gs://BUCKET/runs/x`; gcsfs, the `gcs` extra, is epath's backend for it when TensorFlow
is absent). An object is written when its file is closed and cannot be appended to: `append_text`
rewrites it. Local paths behave as with `pathlib`.
"""

from __future__ import annotations

import contextlib
import io
import os
from typing import Iterator

from etils import epath

PathLike = str | os.PathLike


def is_remote(path: PathLike) -> bool:
  """Whether `path` is a URL (gs://, s3://, ...) rather than a local path."""
  return "://" in os.fspath(path)


def absolute(path: PathLike) -> epath.Path:
  """`path` as an epath.Path: a local one with ~ expanded and made absolute, a URL as it is."""
  if is_remote(path):
    return epath.Path(path)
  return epath.Path(path).expanduser().absolute()


def append_text(path: epath.Path, text: str) -> None:
  """Appends `text` to the file (created if absent): a local file is opened for appending,
  an object is read and written again whole (an object store has no append)."""
  if not is_remote(path):
    with path.open("a") as f:
      f.write(text)
    return
  old = path.read_text() if path.exists() else ""
  path.write_text(old + text)


@contextlib.contextmanager
def open_text(path: epath.Path, mode: str = "r", *, encoding: str = "utf-8",
              newline: str | None = None) -> Iterator[io.TextIOWrapper]:
  """`path` opened as text with any encoding and newline handling (epath's own text mode takes
  neither, e.g. for the csv module's newline='' or a byte-order mark's 'utf-8-sig')."""
  with path.open(mode + "b") as raw, io.TextIOWrapper(raw, encoding=encoding,
                                                      newline=newline) as f:
    yield f
