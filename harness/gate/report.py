"""What a gate layer returns and how the gate prints it: one row per figure that moved, one line per layer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

VERDICTS = ("regression", "improved", "info")


@dataclass(frozen=True)
class Finding:
    """One figure that moved: ``verdict`` is ``regression`` (fails the gate), ``improved`` or ``info``."""

    layer: str
    figure: str
    baseline: Any
    now: Any
    verdict: str
    note: str = ""

    @property
    def change(self) -> str:
        numbers = (int, float)
        if isinstance(self.baseline, numbers) and isinstance(self.now, numbers) and not isinstance(self.now, bool):
            if self.baseline:
                return f"{(self.now - self.baseline) / abs(self.baseline):+.2%}"
            return f"{self.now - self.baseline:+g}"
        return ""


@dataclass
class LayerResult:
    """``status``: ``pass``, ``fail`` (a regression), ``skipped`` (could not run: ``notes`` say why, loudly) or
    ``report`` (measured, never fails: the wall-clock layer in CI)."""

    layer: str
    status: str
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    figures: dict[str, float] = field(default_factory=dict)  # flat, numeric: appended to the history
    compared: int = 0
    against: str = ""  # what the figures were compared with: a baseline file, a commit


def _cell(value: Any, width: int = 22) -> str:
    text = f"{value:.6g}" if isinstance(value, float) else str(value)
    return text if len(text) <= width else text[: width - 1] + "~"


def render(results: list[LayerResult]) -> str:
    """The gate's table: every moved figure with baseline, now, change and verdict, then one line per layer."""
    lines = []
    rows = [f for r in results for f in r.findings]
    if rows:
        header = ("layer", "figure", "baseline", "now", "change", "verdict")
        table = [header] + [(f.layer, f.figure, _cell(f.baseline), _cell(f.now), f.change,
                             f.verdict + (f" ({f.note})" if f.note else "")) for f in rows]
        widths = [max(len(str(row[i])) for row in table) for i in range(5)]
        for row in table:
            lines.append("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)) + "  " + row[5])
        lines.append("")
    for result in results:
        moved = sum(f.verdict == "regression" for f in result.findings)
        word = {"pass": "ok", "fail": "REGRESSION", "skipped": "SKIPPED", "report": "report only"}[result.status]
        lines.append(f"gate {result.layer}: {word}: {result.compared} figures compared, {moved} regressed"
                     + (f" (against {result.against})" if result.against else ""))
        lines.extend(f"  {note}" for note in result.notes)
    return "\n".join(lines)
