"""Small SVG writer and the report's charts: heatmap, overlaid histograms, bars, flame graphs
(the schedule trend's line chart is in trend_chart.py)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from html import escape

from controller.reports.flame import Layout
from node_agent.safe_text import printable

FONT = "font-family:system-ui,sans-serif;font-size:11px"
HOST_COLORS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2")


def _text(s: str) -> str:
    """Untrusted text as SVG text: control characters shown as escapes, markup escaped."""
    return escape(printable(s))


def _n(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


class Svg:
    def __init__(self, width: float, height: float, label: str, svg_id: str | None = None) -> None:
        self.width, self.height, self.label, self.svg_id = width, height, label, svg_id
        self.parts: list[str] = []

    @contextmanager
    def link(self, href: str, **data: str) -> Iterator[None]:
        """What is drawn inside is a link (the console's charts lead to the job behind a dot)."""
        attrs = "".join(f' data-{k}="{_text(v)}"' for k, v in data.items())
        self.parts.append(f'<a href="{_text(href)}"{attrs}>')
        yield
        self.parts.append("</a>")

    def rect(
        self, x: float, y: float, w: float, h: float, fill: str, title: str | None = None
    ) -> None:
        box = f'<rect x="{_n(x)}" y="{_n(y)}" width="{_n(w)}" height="{_n(h)}" fill="{fill}"'
        if title is None:
            self.parts.append(box + "/>")
        else:
            self.parts.append(f"{box}><title>{_text(title)}</title></rect>")

    def text(self, x: float, y: float, s: str, anchor: str = "start", extra: str = "") -> None:
        self.parts.append(
            f'<text x="{_n(x)}" y="{_n(y)}" text-anchor="{anchor}"{extra}>{_text(s)}</text>'
        )

    def path(self, d: str, stroke: str, width: float = 1.5, title: str | None = None) -> None:
        inner = f"<title>{_text(title)}</title>" if title else ""
        self.parts.append(
            f'<path d="{d}" fill="none" stroke="{stroke}" stroke-width="{_n(width)}">{inner}</path>'
        )

    def polyline(
        self, points: Sequence[tuple[float, float]], stroke: str, dash: str = "", title: str = ""
    ) -> None:
        coords = " ".join(f"{_n(x)},{_n(y)}" for x, y in points)
        dashes = f' stroke-dasharray="{dash}"' if dash else ""
        inner = f"<title>{_text(title)}</title>" if title else ""
        self.parts.append(
            f'<polyline points="{coords}" fill="none" stroke="{stroke}" stroke-width="1.5"'
            f"{dashes}>{inner}</polyline>"
        )

    def circle(self, x: float, y: float, r: float, fill: str, title: str | None = None) -> None:
        dot = f'<circle cx="{_n(x)}" cy="{_n(y)}" r="{_n(r)}" fill="{fill}"'
        if title is None:
            self.parts.append(dot + "/>")
        else:
            self.parts.append(f"{dot}><title>{_text(title)}</title></circle>")

    def render(self) -> str:
        ident = f' id="{_text(self.svg_id)}"' if self.svg_id else ""
        head = (
            # No xmlns: the HTML parser puts inline <svg> in the SVG namespace; no URL in the page.
            f'<svg{ident} width="{_n(self.width)}" '
            f'height="{_n(self.height)}" viewBox="0 0 {_n(self.width)} {_n(self.height)}" '
            f'role="img" aria-label="{_text(self.label)}" style="{FONT}">'
        )
        return head + "".join(self.parts) + "</svg>"


def shade(share: float) -> str:
    """White to dark blue by share (0..1)."""
    t = max(0.0, min(1.0, share))
    r, g, b = (int(255 + (c - 255) * t) for c in (8, 48, 107))
    return f"rgb({r},{g},{b})"


def heatmap(
    rows: Sequence[tuple[str, Mapping[int, float]]],
    slots: Sequence[int],
    slot_label: Callable[[int], str],
    label: str,
) -> str:
    """Hosts down, buckets across; a cell's shade is the share of that host's samples."""
    left, top, cell_w, cell_h = 150, 18, max(8, min(36, 960 // max(1, len(slots)))), 14
    svg = Svg(left + cell_w * len(slots) + 10, top + cell_h * len(rows) + 60, label)
    for j, slot in enumerate(slots):
        if j % max(1, len(slots) // 12) == 0:
            x = left + j * cell_w + cell_w / 2
            svg.text(
                x,
                top + cell_h * len(rows) + 12,
                slot_label(slot),
                "end",
                f' transform="rotate(-45 {_n(x)} {_n(top + cell_h * len(rows) + 12)})"',
            )
    # Shade against the chart's largest cell: shares of a wide histogram are all small.
    peak = max([v for _, shares in rows for v in shares.values()] + [1e-9])
    for i, (host, shares) in enumerate(rows):
        y = top + i * cell_h
        svg.text(left - 6, y + cell_h - 3, host, "end")
        svg.rect(left, y, cell_w * len(slots), cell_h - 1, "#f7f7f7")
        for j, slot in enumerate(slots):
            share = shares.get(slot, 0.0)
            if share > 0:
                title = f"{host} {slot_label(slot)}: {share:.1%} of its samples"
                svg.rect(
                    left + j * cell_w,
                    y,
                    cell_w - 1,
                    cell_h - 1,
                    shade((share / peak) ** 0.5),
                    title,
                )
    svg.text(left, 12, f"share of each host's samples per bucket (darkest = {peak:.0%})")
    return svg.render()


def overlay(
    fleet: Mapping[int, float],
    hosts: Sequence[tuple[str, Mapping[int, float]]],
    slots: Sequence[int],
    slot_label: Callable[[int], str],
    label: str,
) -> str:
    """The fleet's distribution as grey bars, each host's as a coloured step line."""
    left, top, width, height = 50, 10, 900, 200
    step = width / max(1, len(slots))
    peak = max([*fleet.values(), *(v for _, h in hosts for v in h.values()), 1e-9])
    svg = Svg(left + width + 180, top + height + 50, label)

    def y(share: float) -> float:
        return top + height - height * share / peak

    for j, slot in enumerate(slots):
        share = fleet.get(slot, 0.0)
        title = f"fleet {slot_label(slot)}: {share:.1%}"
        svg.rect(left + j * step, y(share), step - 1, top + height - y(share), "#c7c7c7", title)
        if j % max(1, len(slots) // 10) == 0:
            svg.text(left + j * step + step / 2, top + height + 14, slot_label(slot), "middle")
    svg.path(f"M{left} {top + height}H{left + width}", "#555", 1)
    svg.text(left - 4, top + 8, f"{peak:.0%}", "end")
    svg.text(left - 4, top + height, "0", "end")
    for k, (host, shares) in enumerate(hosts):
        color = HOST_COLORS[k % len(HOST_COLORS)]
        d = f"M{_n(left)} {_n(y(0))}"
        for j, slot in enumerate(slots):
            yy = y(shares.get(slot, 0.0))
            d += f"V{_n(yy)}H{_n(left + (j + 1) * step)}"
        svg.path(d + f"V{_n(y(0))}", color, 1.5, host)
        svg.rect(left + width + 12, top + k * 16, 10, 10, color)
        svg.text(left + width + 26, top + k * 16 + 9, host)
    legend_y = top + len(hosts) * 16
    svg.rect(left + width + 12, legend_y, 10, 10, "#c7c7c7")
    svg.text(left + width + 26, legend_y + 9, "fleet")
    return svg.render()


def bars(items: Sequence[tuple[str, float]], label: str, unit: str = "") -> str:
    """Horizontal bars, longest first as given."""
    left, bar_h, width = 320, 16, 500
    peak = max([v for _, v in items] + [1e-9])
    svg = Svg(left + width + 90, bar_h * len(items) + 6, label)
    for i, (name, value) in enumerate(items):
        y = 3 + i * bar_h
        short = name if len(name) <= 52 else name[:51] + "…"
        svg.text(left - 6, y + 11, short, "end")
        w = max(1.0, width * value / peak)
        svg.rect(left, y, w, bar_h - 3, "#4c78a8", f"{name}: {value:,.0f}{unit}")
        svg.text(left + w + 4, y + 11, f"{value:,.0f}{unit}")
    return svg.render()


def _warm(name: str) -> str:
    h = hashlib.blake2b(name.encode(), digest_size=2).digest()
    return f"rgb({205 + h[0] % 50},{80 + h[1] % 120},{40 + h[0] % 30})"


def diff_color(delta: float, scale: float) -> str:
    """Red when the host spends more time there than the fleet, blue when less, white when equal."""
    t = min(1.0, abs(delta) / scale) if scale > 0 else 0.0
    fade = int(255 - 200 * t)
    return f"rgb(255,{fade},{fade})" if delta > 0 else f"rgb({fade},{fade},255)"


def flame(found: Layout, label: str, width: float = 1140) -> str:
    """Icicle layout: root row on top, each frame's width proportional to its samples; boxes
    with a `delta` (a differential) are coloured by it."""
    row, total, frames = 16, found.total, found.frames
    depth = max((f.depth for f in frames), default=0) + 1
    svg = Svg(width, depth * row + 4, label)
    scale = max((abs(f.delta) for f in frames if f.delta is not None), default=0.0)
    for f in frames:
        x, w = width * f.start / total, width * f.count / total
        title = f"{f.name}: {f.count:,} samples, {f.count / total:.2%}"
        if f.delta is not None:
            fill = diff_color(f.delta, scale)
            title += f", {f.delta * 100:+.2f} points vs the fleet"
        else:
            fill = _warm(f.name)
        svg.rect(x, f.depth * row, max(w - 0.5, 0.5), row - 1, fill, title)
        chars = int(w / 6.5)
        if chars >= 3:
            shown = printable(f.name)
            text = shown if len(shown) <= chars else shown[: chars - 1] + "…"
            svg.text(x + 2, f.depth * row + 12, text, extra=' pointer-events="none"')
    return svg.render()
