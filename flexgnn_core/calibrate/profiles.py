"""Datasheet profiles of known GPU servers, for what-if planning (values from specification sheets, not measured).

``profile(name)``: ``h200`` / ``h100`` / ``a100`` with their usual link and disk, or ``gpu-link-disk`` such as
``h100-pcie4-nvme5``. Aggregation on a GPU is modelled at its memory roofline.
"""

from __future__ import annotations

from flexgnn_core.plan.cost import Hardware

# Datasheet values (vendor specification sheets; REFERENCE.md section 4), not measurements. Aggregation on a GPU
# is modelled at its memory roofline: one 4-byte read per edge and feature, so rate = memory bandwidth / 4.
# Overlap 1.0 assumes the copy engines run beside compute; step_overhead_s 0 is unmodelled, not measured.
GPUS = {  # name: (memory bytes/s, fp32 non-tensor FLOP/s, memory bytes)
    "h200": (4.8e12, 67e12, 141e9),
    "h100": (3.35e12, 67e12, 80e9),
    "a100": (2.039e12, 19.5e12, 80e9),
}
LINKS = {"pcie4": 31.5e9, "pcie5": 63e9}  # per direction, x16
DISKS = {"nvme4": 7e9, "nvme5": 12e9}  # sequential, read and write taken alike
PROFILES = {"h200": ("h200", "pcie5", "nvme5"), "h100": ("h100", "pcie5", "nvme4"),
            "a100": ("a100", "pcie4", "nvme4")}


def profile(name: str) -> Hardware:
    """A datasheet profile: ``h200``/``h100``/``a100`` (with their usual link and disk) or ``gpu-link-disk``,
    e.g. ``h100-pcie4-nvme5``."""
    parts = PROFILES.get(name, tuple(name.split("-")))
    if len(parts) != 3 or parts[0] not in GPUS or parts[1] not in LINKS or parts[2] not in DISKS:
        raise ValueError(f"hardware profile '{name}' is unknown; valid: {', '.join(PROFILES)} or gpu-link-disk "
                         f"with gpu in {', '.join(GPUS)}, link in {', '.join(LINKS)}, disk in {', '.join(DISKS)}")
    gpu, link, disk = parts
    memory, flops, _ = GPUS[gpu]
    return Hardware(name="-".join(parts), agg_edge_width_per_s=memory / 4, matmul_flop_per_s=flops,
                    memory_bytes_per_s=memory, h2d_bytes_per_s=LINKS[link], d2h_bytes_per_s=LINKS[link],
                    disk_read_bytes_per_s=DISKS[disk], disk_write_bytes_per_s=DISKS[disk], step_overhead_s=0.0,
                    overlap=1.0, source="datasheet")
