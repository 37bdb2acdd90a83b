"""Hydra plugin package of flexgnn-bench: the ``grids`` sweeper (``grids_sweeper.py``). Hydra finds sweepers only
inside the ``hydra_plugins`` namespace package, so it lives here rather than in ``harness/``."""
