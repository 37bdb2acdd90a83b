"""``bench/gpu_check.py --dry``: the prepared GPU check parses, and its CPU parts work (issue 18).

On a GPU machine the same script runs ``pytest -m gpu`` and the benchmark under a device cap; here its dry mode
collects the GPU tests and runs one budgeted benchmark worker on CPU, writing the same JSON record.
"""

from __future__ import annotations

import json

import pytest

from bench import gpu_check


@pytest.mark.slow  # 20 s of subprocesses; CI runs the slow set (.ci/run)
def test_dry_mode_collects_the_gpu_tests_and_runs_a_capped_benchmark_worker_on_cpu(tmp_path, capsys):
    out = tmp_path / "check.json"
    record = gpu_check.main(["--dry", "--out", str(out), "--cap-gib", "0.5"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(record))  # the file holds the whole record
    assert record["dry"] is True and record["device_cap_bytes"] == 2**29
    assert record["machine"]["torch"] and "device_count" in record["machine"]
    assert record["pytest"]["status"] == "ok", record["pytest"]["stdout_tail"]
    assert "tests collected" in record["pytest"]["summary"]
    assert "test_two_rank_nccl_ddp_matches_pyg" in record["pytest"]["stdout_tail"]
    bench = record["bench"]
    assert bench["status"] == "ok", bench["stderr_tail"]
    run = bench["record"]
    assert run["device"] == "cpu" and run["device_cap_fraction"] is None  # the cap is a CUDA allocator limit
    job = gpu_check.DRY_JOB
    assert run["options"]["num_chunks"] in job["chunk_candidates"]
    assert 0 < run["tier_peak_bytes"]["device"] <= job["options"]["device_budget_bytes"]
    assert run["median_epoch_s"] > 0 and len(run["epoch_times_s"]) == 3
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["out"] == str(out) and summary["pytest"][0] == "ok" and summary["bench"][0] == "ok"


def test_on_a_machine_without_cuda_the_full_check_refuses_and_says_use_dry(tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "machine", lambda: {"cuda_available": False, "gpus": []})
    out = tmp_path / "check.json"
    try:
        gpu_check.main(["--out", str(out)])
    except SystemExit as stop:
        assert "--dry" in str(stop)
    else:
        raise AssertionError("the full check ran without CUDA")
    assert "--dry" in json.loads(out.read_text())["error"]
