"""flexgnn_core: an open FlexGNN — exact chunked full-graph GNN training with intermediates on device, host, disk.

A library: it never imports Hydra or MLflow (the harness composes, runs and records).
"""
