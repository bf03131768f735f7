"""File I/O that works on local paths and on GCS (``gs://``) alike, with atomic writes."""

from __future__ import annotations

import io
import json
import os

import numpy as np
from etils import epath


def is_remote(path) -> bool:
  return "://" in str(path)


def resolve(path) -> str:
  """Absolute local path, or the remote URL unchanged (``os.path.abspath`` would mangle gs://)."""
  return str(path) if is_remote(path) else os.path.abspath(path)


def join(*parts) -> str:
  return str(epath.Path(parts[0]).joinpath(*parts[1:]))


def makedirs(path) -> None:
  epath.Path(path).mkdir(parents=True, exist_ok=True)


def exists(path) -> bool:
  return epath.Path(path).exists()


def write_bytes_atomic(path, data: bytes) -> str:
  """Writes to ``path.tmp`` then renames, so readers never see a partial file."""
  p = epath.Path(path)
  p.parent.mkdir(parents=True, exist_ok=True)
  tmp = p.parent / (p.name + ".tmp")
  tmp.write_bytes(data)
  tmp.rename(p) if not p.exists() else tmp.replace(p)
  return str(p)


def save_json(path, obj) -> None:
  write_bytes_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())


def load_json(path):
  return json.loads(epath.Path(path).read_text())


def save_npz(path, **arrays) -> str:
  buf = io.BytesIO()
  np.savez(buf, **arrays)
  return write_bytes_atomic(path, buf.getvalue())


def load_npz(path) -> dict:
  with np.load(io.BytesIO(epath.Path(path).read_bytes())) as f:
    return {k: f[k] for k in f.files}
