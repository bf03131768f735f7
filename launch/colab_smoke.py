#!/usr/bin/env python3
r"""Runs the code cells of ``launch/colab.ipynb`` as a script (the notebook is the single source).

  python launch/colab_smoke.py --smoke          # CPU-tiny end to end: ':tiny' configs, a few steps
  python launch/colab_smoke.py --dry_run        # print the commands the notebook would run
  python launch/colab_smoke.py --dry_run --backend=tpu

The cells read a few environment variables, set here: CDM_NOTEBOOK_DRY_RUN, CDM_NOTEBOOK_SMOKE,
CDM_NOTEBOOK_BACKEND (pretend to be on cpu/tpu), CDM_NOTEBOOK_WORKDIR, CDM_REPO_DIR.
``tests/test_launch.py`` uses :func:`run_notebook` in dry-run mode and checks every command.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from typing import Optional

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO_ROOT, "launch", "colab.ipynb")


def load_notebook(path: str = NOTEBOOK) -> dict:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def cell_source(cell: dict) -> str:
  src = cell.get("source", "")
  return "".join(src) if isinstance(src, list) else src


def code_cells(nb: Optional[dict] = None) -> list:
  """The sources of the notebook's code cells, in order; refuses IPython magics / shell escapes."""
  nb = nb if nb is not None else load_notebook()
  out = []
  for i, cell in enumerate(nb["cells"]):
    if cell["cell_type"] != "code":
      continue
    src = cell_source(cell)
    for line in src.splitlines():
      if line.lstrip().startswith(("!", "%")):
        raise ValueError(f"code cell {i} uses an IPython magic / shell escape ({line.strip()!r}): "
                         "keep cells plain Python so they run as a script.")
    out.append(src)
  return out


@contextlib.contextmanager
def _env(updates: dict):
  saved = {k: os.environ.get(k) for k in updates}
  try:
    for k, v in updates.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    yield
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v


def run_notebook(*, dry_run: bool, smoke: bool = False, backend: Optional[str] = None,
                 workdir: Optional[str] = None, repo_dir: str = REPO_ROOT,
                 nb: Optional[dict] = None) -> dict:
  """Executes every code cell in one namespace (as Colab would); returns that namespace.

  With ``dry_run`` nothing is run: the notebook's ``run`` helper only records the commands, in
  ``namespace["COMMANDS"]``.
  """
  env = {
      "CDM_NOTEBOOK_DRY_RUN": "1" if dry_run else None,
      "CDM_NOTEBOOK_SMOKE": "1" if smoke else None,
      "CDM_NOTEBOOK_BACKEND": backend,
      "CDM_NOTEBOOK_WORKDIR": workdir,
      "CDM_REPO_DIR": repo_dir,
  }
  namespace = {"__name__": "__colab__"}
  with _env(env):
    for i, src in enumerate(code_cells(nb)):
      exec(compile(src, f"<colab.ipynb code cell {i}>", "exec"), namespace)  # pylint: disable=exec-used
  return namespace


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--dry_run", action="store_true", help="Print the commands; run nothing.")
  p.add_argument("--smoke", action="store_true", help="CPU-tiny (':tiny' configs, a few steps).")
  p.add_argument("--backend", choices=("cpu", "tpu"), default=None,
                 help="Pretend to be on this backend (default: detect).")
  p.add_argument("--workdir", default=None,
                 help="Where the workdirs go (default: a temporary folder with --smoke, else "
                 "workdirs/colab in the repo).")
  args = p.parse_args(argv)
  workdir = args.workdir
  if workdir is None and args.smoke and not args.dry_run:
    workdir = tempfile.mkdtemp(prefix="cdm_colab_smoke_")
  ns = run_notebook(dry_run=args.dry_run, smoke=args.smoke, backend=args.backend, workdir=workdir)
  if not args.dry_run:
    print("sample grids:", ", ".join(ns["SAMPLE_PNGS"].values()))
  return 0


if __name__ == "__main__":
  sys.exit(main())
