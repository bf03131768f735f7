"""Launch helpers for cdm: Cloud TPU VMs / pod slices (``launch/tpu.py``) and the Colab notebook."""
