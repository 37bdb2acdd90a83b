"""``python -m flexgnn_core.calibrate [--force] [--device cuda]``: measure (or load) this machine's rates."""

from __future__ import annotations

import argparse
import json
import time

from flexgnn_core.calibrate import load_or_measure

parser = argparse.ArgumentParser(prog="python -m flexgnn_core.calibrate",
                                 description="Calibrate the FlexGNN cost model on this machine (cached).")
parser.add_argument("--force", action="store_true", help="measure again even when cached")
parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
args = parser.parse_args()
start = time.perf_counter()
rates = load_or_measure(args.device, force=args.force)
print(json.dumps({**rates.to_json(), "elapsed_s": round(time.perf_counter() - start, 3)}))
