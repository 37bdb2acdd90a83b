#!/usr/bin/env bash
# Create (or reuse) the pinned Python environment the DGL baseline runs in:
#
#     bash scripts/make_dgl_env.sh
#
# `system=dgl` runs this itself on first use (baselines/dgl_env.py: under a file lock, output on stderr) unless
# system.auto_install=false or FLEXGNN_DGL_AUTO_INSTALL=0.
#
# Why a separate environment: DGL 2.1.0 is the newest DGL wheel pip can install for Linux here, and its C++
# libraries exist only for torch 2.0.0 to 2.2.1; on the main environment's torch `import dgl` fails. `system=dgl`
# therefore runs a worker process (baselines/dgl_worker.py) with this environment's python; the main package never
# imports DGL.
#
# Where: ${FLEXGNN_DGL_ENV:-$HOME/.cache/flexgnn-bench/dgl-env}. Reused when complete: a marker file is written only
# after the import check passes, and it records the pins (scripts/dgl_env_pins.txt), so changing a pin rebuilds the
# environment. FLEXGNN_DGL_PYTHON picks the interpreter (3.8-3.12, the Pythons all pinned wheels exist for; default
# python3). Size: about 2.9 GB downloaded, 5.3 GB on disk (measured 2026-12-01: 199 s on 2 cores): torch 2.2.1 on
# PyPI is a CUDA build (it also runs on CPU) and needs its nvidia-* libraries to import; DGL 2.1.0 on PyPI is a
# CPU-only build. The lighter sets measured, and why they are not used: results/LOG.md, 2026-12-01.
set -euo pipefail

ENV_DIR="${FLEXGNN_DGL_ENV:-$HOME/.cache/flexgnn-bench/dgl-env}"
PYTHON="${FLEXGNN_DGL_PYTHON:-python3}"
MARKER="$ENV_DIR/.flexgnn-dgl-env-ok"
PINS_FILE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/dgl_env_pins.txt"
mapfile -t PINS < <(sed -e 's/#.*//' -e 's/[[:space:]]*$//' -e '/^$/d' "$PINS_FILE")
PINS_LINE="${PINS[*]}"

if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$PINS_LINE" ]]; then
    echo "DGL environment ready (reused): $ENV_DIR"
    exit 0
fi

if ! "$PYTHON" -c 'import sys; sys.exit(not (3, 8) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null; then
    echo "error: the DGL environment needs Python 3.8-3.12 (dgl 2.1.0 and torch 2.2.1 have wheels for those only);" \
         "'$PYTHON' is $("$PYTHON" -V 2>/dev/null || echo "not found"). Set FLEXGNN_DGL_PYTHON to such a python." >&2
    exit 2
fi

# The directory is replaced whole; never one that holds something else than an environment (a mistyped path).
if [[ -d "$ENV_DIR" && -n "$(ls -A "$ENV_DIR")" && ! -f "$ENV_DIR/pyvenv.cfg" ]]; then
    echo "error: $ENV_DIR exists and is not a Python environment; not replacing it. Point FLEXGNN_DGL_ENV" \
         "(or system.env_dir) at a new or empty directory, or remove it." >&2
    exit 3
fi

start=$(date +%s)
echo "Creating the DGL environment in $ENV_DIR with: $PINS_LINE"
echo "(about 2.9 GB to download, 5.3 GB on disk; measured 199 s on 2 cores, longer on a slow link)"
rm -rf "$ENV_DIR"
mkdir -p "$(dirname "$ENV_DIR")"
"$PYTHON" -m venv "$ENV_DIR"
"$ENV_DIR/bin/python" -m pip install --quiet --upgrade pip
"$ENV_DIR/bin/python" -m pip install "${PINS[@]}"

# The check imports what the worker imports and runs each DGL layer forward and backward once.
DGLBACKEND=pytorch "$ENV_DIR/bin/python" - <<'EOF'
import dgl
import torch
import torch_geometric
from dgl.nn import GATConv, GraphConv, SAGEConv

g = dgl.add_self_loop(dgl.graph((torch.tensor([0, 1, 2]), torch.tensor([1, 2, 0])), num_nodes=3))
x = torch.randn(3, 4, requires_grad=True)
for layer in (GraphConv(4, 2, norm="both"), SAGEConv(4, 2, "mean"), GATConv(4, 2, num_heads=2)):
    layer(g, x).sum().backward()
print(f"dgl {dgl.__version__}, torch {torch.__version__}, torch_geometric {torch_geometric.__version__}: OK")
EOF
echo "$PINS_LINE" > "$MARKER"
echo "DGL environment ready in $(( $(date +%s) - start )) s: $ENV_DIR ($(du -sh "$ENV_DIR" | cut -f1))"
