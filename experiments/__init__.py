"""Research runs built on the `wsi_ats` package, kept out of it: each subpackage is one experiment.

Importable from a checkout's root (``python -m pytest``, ``benchmarks/*.py``); not shipped in the wheel.
"""
