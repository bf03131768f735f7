"""Experiments built from cdm's own commands (``python -m cdm.experiments.<name>``)."""
