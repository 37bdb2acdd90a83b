"""The throughput regression gate, ``python -m harness.gate`` (see ``harness/gate/__main__.py`` and README).

Modules: ``cases`` (the fixed cases, the epoch-end probe, the op counter), one module per layer
(``deterministic``, ``instructions`` with its ``callgrind_worker``, ``wallclock`` with its ``ab_worker``),
``report`` (findings and the table) and ``history`` (``results/bench/history.jsonl`` and its plot).
"""
