"""Every cdm module imports, all in one process: no absl flag defined twice by two commands."""

import importlib
import pkgutil

import cdm


def test_every_module_imports_together():
  names = [m.name for m in pkgutil.walk_packages(cdm.__path__, "cdm.")]
  assert "cdm.main" in names and "cdm.bench" in names and "cdm.data.prepare" in names
  for name in names:
    importlib.import_module(name)
