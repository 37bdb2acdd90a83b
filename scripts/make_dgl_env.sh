#!/usr/bin/env bash
# Create (or reuse) the pinned Python environment the DGL baseline runs in:
#
#     bash scripts/make_dgl_env.sh
#
# Why a separate environment: DGL 2.1.0 is the newest DGL wheel pip can install here, and its C++ libraries exist
# only for torch 2.0.0 to 2.2.1; on the main environment's torch `import dgl` fails. `system=dgl` therefore runs a
# worker process (baselines/dgl_worker.py) with this environment's python; the main package never imports DGL.
#
# Where: ${FLEXGNN_DGL_ENV:-$HOME/.cache/flexgnn-bench/dgl-env}. Reused when complete: a marker file is written only
# after the import check passes, and it records the pins, so changing a pin rebuilds the environment.
# FLEXGNN_DGL_PYTHON picks the interpreter (3.8-3.11; default python3). About 5.3 GB: torch 2.2.1 on PyPI is a CUDA
# build (it also runs on CPU); DGL 2.1.0 on PyPI is a CPU-only build.
set -euo pipefail

ENV_DIR="${FLEXGNN_DGL_ENV:-$HOME/.cache/flexgnn-bench/dgl-env}"
PYTHON="${FLEXGNN_DGL_PYTHON:-python3}"
MARKER="$ENV_DIR/.flexgnn-dgl-env-ok"
PINS=(
    "torch==2.2.1"
    "dgl==2.1.0"
    "numpy<2"
    "torchdata==0.7.1"
    "pandas<3"
    "pyyaml"
    "pydantic"
    "packaging"
    "torch-geometric==2.8.1"
)
PINS_LINE="${PINS[*]}"

if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$PINS_LINE" ]]; then
    echo "DGL environment ready (reused): $ENV_DIR"
    exit 0
fi

start=$(date +%s)
echo "Creating the DGL environment in $ENV_DIR with: $PINS_LINE"
rm -rf "$ENV_DIR"
mkdir -p "$(dirname "$ENV_DIR")"
"$PYTHON" -m venv "$ENV_DIR"
"$ENV_DIR/bin/python" -m pip install --quiet --upgrade pip
"$ENV_DIR/bin/python" -m pip install --quiet "${PINS[@]}"

# The check imports what the worker imports and runs each DGL layer forward and backward once.
"$ENV_DIR/bin/python" - <<'EOF'
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
