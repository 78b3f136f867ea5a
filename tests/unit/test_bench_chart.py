"""bench/chart.py on the real BENCHMARKS.md: every ratio row of the summary becomes a bar, the chart's met/not met
agrees with the table's "met" column, and a PNG is written."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from bench import chart

ROOT = Path(__file__).resolve().parents[2]


def test_summary_ratios_chart(tmp_path):
    markdown = (ROOT / "BENCHMARKS.md").read_text()
    rows = chart.summary_rows(markdown)
    items = chart.bars(markdown)
    assert len(items) >= 8, [b.label for b in items]
    by_label = {b.label: b for b in items}
    for cells in rows:
        matching = [b for label, b in by_label.items() if label.startswith(cells[0] + ":")
                    and chart.RATIO.search(cells[1]) and chart.LATEST.match(cells[2])
                    and float(chart.LATEST.match(cells[2])["value"]) == b.value]
        for b in matching:
            met = cells[3].strip("* ")
            if met.startswith("yes"):
                assert b.met, f"the table says met, the numbers do not: {cells}"
            elif met.startswith("no"):
                assert not b.met, f"the table says not met, the numbers say met: {cells}"
    out = tmp_path / "ratios.png"
    chart.draw(items, out)
    with Image.open(out) as img:
        assert img.format == "PNG" and img.height > 26 * len(items)


def test_parsing():
    md = """## Summary\n\n| issue | target | latest | met |\n|---|---|---|---|\n| #1 a | x <= 1.5x | 1.2x (run) | yes |
| #1 b | reported | 0.3x | reported |\n| #2 c | y >= 2x | 1.5x | no |\n\n## Next\n| not | this |\n"""
    items = chart.bars(md)
    assert [(b.value, b.op, b.target, b.met) for b in items] == [(1.2, "<=", 1.5, True), (1.5, ">=", 2.0, False)]
