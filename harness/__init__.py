"""harness: composes configs (Hydra), runs one system on one graph, writes the JSON run record, indexes it in MLflow.

Entry point: ``python -m harness [system=pyg] [model=gcn] [dataset=synthetic] [+sweep=speedup]``.
"""
