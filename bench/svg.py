#!/usr/bin/env python3
"""Turns the text output of bench/sessions.sh, spread.sh and respawn.sh (in DIR) into CSV files and
SVG bar charts in OUT. Plain SVG written by hand: no plotting library to install."""
import csv
import re
import sys
from pathlib import Path
from xml.sax.saxutils import escape

src, out = Path(sys.argv[1]), Path(sys.argv[2])
out.mkdir(parents=True, exist_ok=True)


def machine(text):
    m = re.search(r"^machine: (.*)$", text, re.M)
    return m.group(1) if m else ""


def svg_open(width, height, title, subtitle):
    """The start of a chart: the svg element, a white background, the title and subtitle."""
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="16" y="24" font-size="16" font-weight="bold">{escape(title)}</text>',
        f'<text x="16" y="44" fill="#555">{escape(subtitle)}</text>',
    ]


def bars(path, title, subtitle, rows, unit, colors=None, fmt="{:,.0f}"):
    """Horizontal bars: rows is [(label, value)]."""
    width, left, bar_h, gap, top = 760, 330, 26, 12, 64
    height = top + len(rows) * (bar_h + gap) + 30
    vmax = max(v for _, v in rows) or 1
    colors = colors or ["#3b6ea5"] * len(rows)
    parts = svg_open(width, height, title, subtitle)
    for i, (label, value) in enumerate(rows):
        y = top + i * (bar_h + gap)
        w = (width - left - 110) * value / vmax
        parts.append(f'<text x="{left - 10}" y="{y + bar_h * 0.7}" text-anchor="end">{escape(label)}</text>')
        parts.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{colors[i]}"/>')
        parts.append(f'<text x="{left + w + 6:.1f}" y="{y + bar_h * 0.7}">{escape(fmt.format(value))} {escape(unit)}</text>')
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


def stacked(path, title, subtitle, rows):
    """One bar per row, split into each worker's share: rows is [(label, [counts])]."""
    width, left, bar_h, gap, top = 760, 200, 26, 12, 64
    height = top + len(rows) * (bar_h + gap) + 30
    palette = ["#3b6ea5", "#e07b39", "#5aa55a", "#b04a8c", "#888"]
    parts = svg_open(width, height, title, subtitle)
    span = width - left - 30
    for i, (label, counts) in enumerate(rows):
        y = top + i * (bar_h + gap)
        total = sum(counts) or 1
        x = left
        parts.append(f'<text x="{left - 10}" y="{y + bar_h * 0.7}" text-anchor="end">{escape(label)}</text>')
        for j, n in enumerate(counts):
            w = span * n / total
            if w > 0:
                parts.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{palette[j % len(palette)]}" stroke="white"/>')
                if w > 22:
                    parts.append(f'<text x="{x + w / 2:.1f}" y="{y + bar_h * 0.7}" text-anchor="middle" fill="white">{n}</text>')
            x += w
    parts.append("</svg>")
    path.write_text("\n".join(parts) + "\n")


# Signed-in throughput and p99 against the Node peer.
text = (src / "sessions.txt").read_text()
rows = []
for line in text.splitlines():
    m = re.match(r"^(.{46}) +(\d+) +(\S+) +(\S+) +(\d+) +(\d+)", line)
    if m and m.group(1).strip() != "server":
        p99 = m.group(4)
        p99_ms = float(p99[:-2]) if p99.endswith("ms") else float(p99[:-2]) / 1000 if p99.endswith("us") else float(p99[:-1]) * 1000
        rows.append((m.group(1).strip(), int(m.group(2)), p99_ms))
with open(out / "sessions.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["server", "req_per_s", "p99_ms"])
    w.writerows(rows)
colors = ["#999" if "Node" in r[0] else "#3b6ea5" for r in rows]
bars(out / "sessions-rps.svg", "Requests per second (median of runs)", machine(text), [(r[0], r[1]) for r in rows], "req/s", colors)
bars(out / "sessions-p99.svg", "p99 latency (lower is better)", machine(text), [(r[0], r[2]) for r in rows], "ms", colors, "{:.2f}")

# Spread of a keep-alive burst over 4 workers.
text = (src / "spread.txt").read_text()
rows = []
for line in text.splitlines():
    m = re.match(r"^(shared|per-worker(?:/load|/hash)?|node-cluster) +(\d+) +(\d+) +(\d+(?:/\d+)+)", line)
    if m and m.group(2) == "4":
        rows.append((f"{m.group(1)}, trial {m.group(3)}", [int(x) for x in m.group(4).split("/")]))
with open(out / "spread.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["layout_trial", "worker_1", "worker_2", "worker_3", "worker_4"])
    w.writerows([[label] + counts for label, counts in rows])
stacked(out / "spread.svg", "Keep-alive connections per worker (4 workers, busiest first)",
        machine(text) + "; more workers than cores shows the shape", rows)

# Respawn latency.
text = (src / "respawn.txt").read_text()
rows = []
for line in text.splitlines():
    m = re.match(r"^(clusterd|node cluster): respawn latency over (\d+) kills: median ([\d.]+) ms", line)
    if m:
        rows.append((m.group(1), float(m.group(3))))
with open(out / "respawn.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["server", "median_ms"])
    w.writerows(rows)
bars(out / "respawn.svg", "Respawn latency: kill -9 to the replacement's first 200 (median)", machine(text),
     rows, "ms", ["#999" if r[0].startswith("node") else "#3b6ea5" for r in rows], "{:.1f}")
