"""Charts for reports as inline SVG: drawn here rather than by a script, so the HTML and its PDF print need no
JavaScript (the report's CSP allows none) and look the same offline."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

GRADE_COLORS = {"red": "#dc2626", "orange": "#ea580c", "yellow": "#ca8a04", "blue": "#2563eb", "normal": "#16a34a"}
INK, GRID, ACCENT = "#1f2937", "#d1d5db", "#2563eb"


def _number(v: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= size:
            return f"{v / size:.1f}{unit}"
    return f"{v:g}"


def stacked_bars(labels: Sequence[str], series: Sequence[tuple[str, str, Sequence[float]]], width: int = 680,
                 height: int = 200) -> str:
    """Bars per label, stacked by series (name, color, values); a legend below."""
    left, bottom, top = 44, 34, 8
    plot_w, plot_h = width - left - 8, height - bottom - top
    totals = [sum(s[2][i] for s in series) for i in range(len(labels))]
    peak = max(totals, default=0) or 1
    n = max(len(labels), 1)
    bar = plot_w / n
    parts = [_axes(left, top, plot_w, plot_h, peak)]
    for i in range(len(labels)):
        y: float = top + plot_h
        for _, color, values in series:
            hgt = values[i] / peak * plot_h
            if hgt > 0:
                y -= hgt
                parts.append(f'<rect x="{left + i * bar + bar * 0.1:.1f}" y="{y:.1f}" width="{max(bar * 0.8, 1):.1f}" '
                             f'height="{hgt:.1f}" fill="{color}"/>')
    for i in sorted({0, n // 2, n - 1}) if labels else []:
        parts.append(f'<text x="{left + i * bar + bar / 2:.1f}" y="{top + plot_h + 14}" font-size="10" '
                     f'text-anchor="middle" fill="{INK}">{escape(labels[i])}</text>')
    x = left
    for name, color, _ in series:
        parts.append(f'<rect x="{x}" y="{height - 12}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{x + 14}" y="{height - 3}" font-size="10" fill="{INK}">{escape(name)}</text>')
        x += 14 + 7 * len(name) + 18
    return _svg(width, height, parts)


def hbars(rows: Sequence[tuple[str, float]], width: int = 680, color: str = ACCENT) -> str:
    """One horizontal bar per (label, value), largest first as given."""
    row_h, left = 18, 200
    height = max(len(rows), 1) * row_h + 8
    peak = max((v for _, v in rows), default=0) or 1
    parts = []
    for i, (label, value) in enumerate(rows):
        y = 4 + i * row_h
        w = value / peak * (width - left - 70)
        parts.append(f'<text x="{left - 6}" y="{y + 12}" font-size="11" text-anchor="end" fill="{INK}">'
                     f'{escape(label[:34])}</text><rect x="{left}" y="{y + 2}" width="{max(w, 1):.1f}" height="12" '
                     f'fill="{color}"/><text x="{left + w + 4:.1f}" y="{y + 12}" font-size="10" fill="{INK}">'
                     f'{_number(value)}</text>')
    return _svg(width, height, parts)


def line(observed: Sequence[float], forecast: Sequence[float] = (), threshold: float | None = None,
         width: int = 330, height: int = 120) -> str:
    """A series (solid) and its forecast (dashed) after it, with its threshold (a red line)."""
    left, top, bottom = 40, 6, 16
    plot_w, plot_h = width - left - 6, height - top - bottom
    values = list(observed) + list(forecast)
    peak = max(values + [threshold or 0], default=0) or 1
    n = max(len(values) - 1, 1)

    def points(seq: Sequence[float], start: int) -> str:
        return " ".join(f"{left + (start + i) / n * plot_w:.1f},{top + plot_h - v / peak * plot_h:.1f}"
                        for i, v in enumerate(seq))

    parts = [_axes(left, top, plot_w, plot_h, peak)]
    parts.append(f'<polyline points="{points(observed, 0)}" fill="none" stroke="{ACCENT}" stroke-width="1.5"/>')
    if forecast and observed:
        parts.append(f'<polyline points="{points([observed[-1], *forecast], len(observed) - 1)}" fill="none" '
                     f'stroke="{GRADE_COLORS["orange"]}" stroke-width="1.5" stroke-dasharray="4 3"/>')
    if threshold is not None:
        y = top + plot_h - threshold / peak * plot_h
        parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRADE_COLORS["red"]}" '
                     f'stroke-dasharray="2 2"/>')
    return _svg(width, height, parts)


def gantt(rows: Sequence[tuple[str, int, int]], color: str, width: int = 680) -> str:
    """One bar per (label, start ns, end ns) on a shared time axis (an incident's stages)."""
    row_h, left = 22, 170
    height = max(len(rows), 1) * row_h + 8
    lo = min((s for _, s, _ in rows), default=0)
    hi = max((e for _, _, e in rows), default=1)
    span = max(hi - lo, 1)
    parts = []
    for i, (label, start, end) in enumerate(rows):
        y = 4 + i * row_h
        x = left + (start - lo) / span * (width - left - 10)
        w = max((end - start) / span * (width - left - 10), 4)
        parts.append(f'<text x="{left - 6}" y="{y + 14}" font-size="11" text-anchor="end" fill="{INK}">{escape(label)}'
                     f'</text><rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="14" fill="{color}" rx="2"/>')
    return _svg(width, height, parts)


def _axes(left: int, top: int, plot_w: float, plot_h: float, peak: float) -> str:
    out = []
    for k in range(3):
        y = top + plot_h - k / 2 * plot_h
        out.append(f'<line x1="{left}" x2="{left + plot_w:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="{GRID}" '
                   f'stroke-width="0.5"/><text x="{left - 4}" y="{y + 3:.1f}" font-size="9" text-anchor="end" '
                   f'fill="{INK}">{_number(peak * k / 2)}</text>')
    return "".join(out)


def _svg(width: int, height: int, parts: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'font-family="sans-serif">{"".join(parts)}</svg>')
