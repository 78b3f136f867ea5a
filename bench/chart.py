"""chart: the summary table of BENCHMARKS.md as a PNG of ratios against their targets.

    .venv/bin/python -m bench.chart [--benchmarks BENCHMARKS.md] [--out bench/ratios.png]

Reads the first table under "## Summary" (columns: issue, target, latest, met). A row whose target is a ratio
(``<= 1.5x``, ``>= 0.9x``) and whose "latest" cell starts with one (``1.43x ...``) becomes a bar: the measured ratio
on a log scale, the target as a tick, green when met and red when not (read from the ratio and the target, not
from the "met" column, so the chart cannot disagree with the numbers). Rows that are reported, not targeted, are
left out. Only Pillow is needed.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
RATIO = re.compile(r"(?P<op><=|>=)\s*(?P<value>\d+(?:\.\d+)?)x")
LATEST = re.compile(r"^\s*(?P<value>\d+(?:\.\d+)?)x")


@dataclass(frozen=True)
class Bar:
    label: str     # the issue and the target's words
    value: float   # measured ratio (served / upstream, or as the target states it)
    op: str        # "<=" or ">="
    target: float

    @property
    def met(self) -> bool:
        return self.value <= self.target if self.op == "<=" else self.value >= self.target


def summary_rows(markdown: str) -> list[list[str]]:
    """The cells of the first table after the "## Summary" heading (header and separator skipped)."""
    lines = markdown.splitlines()
    start = next((i for i, ln in enumerate(lines) if ln.startswith("## Summary")), None)
    if start is None:
        raise ValueError('no "## Summary" section')
    rows, seen_table = [], False
    for ln in lines[start + 1:]:
        if ln.startswith("|"):
            seen_table = True
            cells = [c.strip() for c in ln.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
        elif seen_table or ln.startswith("## "):
            break
    return rows[1:]  # without the header


def bars(markdown: str) -> list[Bar]:
    out = []
    for cells in summary_rows(markdown):
        if len(cells) < 3:
            continue
        issue, target, latest = cells[0], cells[1], cells[2]
        t, v = RATIO.search(target), LATEST.match(latest)
        if t and v:
            words = RATIO.sub("", target).replace("`", "").strip(" ,;")
            out.append(Bar(f"{issue}: {words}", float(v["value"]), t["op"], float(t["value"])))
    return out


def draw(items: list[Bar], path: Path) -> None:
    font = ImageFont.load_default()
    row, left, width, right = 26, 430, 420, 110
    lo, hi = 0.05, 4.0  # log-scale span of the x axis (ratios)
    height = 50 + row * len(items) + 40
    img = Image.new("RGB", (left + width + right, height), "white")
    d = ImageDraw.Draw(img)

    def x(v: float) -> float:
        v = min(max(v, lo), hi)
        return left + width * (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))

    d.text((10, 10), "served / upstream (log scale): bar = latest, | = target; green met, red not", fill="black",
           font=font)
    for tick in (0.1, 0.25, 0.5, 1.0, 2.0, 4.0):
        d.line([(x(tick), 40), (x(tick), height - 30)], fill=(225, 225, 225))
        d.text((x(tick) - 10, height - 25), f"{tick:g}x", fill="gray", font=font)
    for i, b in enumerate(items):
        y = 45 + i * row
        d.text((10, y + 5), b.label[:80], fill="black", font=font)
        d.rectangle([x(lo), y + 4, x(b.value), y + row - 6], fill=(60, 160, 80) if b.met else (200, 60, 60))
        d.line([(x(b.target), y), (x(b.target), y + row - 2)], fill="black", width=3)
        d.text((left + width + 8, y + 5), f"{b.value:g}x ({b.op} {b.target:g}x)", fill="black", font=font)
    img.save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchmarks", type=Path, default=ROOT / "BENCHMARKS.md")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "ratios.png")
    args = ap.parse_args()
    items = bars(args.benchmarks.read_text())
    if not items:
        raise SystemExit(f"no ratio rows in the summary table of {args.benchmarks}")
    draw(items, args.out)
    print(f"{len(items)} ratios ({sum(b.met for b in items)} met) -> {args.out}")


if __name__ == "__main__":
    main()
