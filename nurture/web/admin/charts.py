"""Charts for the staff pages: SVG rendered on the server by pygal, inlined into the page.

Why pygal (docs/staff.md, "Charts"): a maintained charting library that writes plain SVG in Python, so the
pages need no JavaScript, no CDN and no network, print well, and scale to any width; nurture keeps no
plotting code of its own. Its interactive extras are off (``js=[]``: they would load a script from the
internet). Every chart comes with its numbers as a table beside it (``<details>``), for screen readers and
for anyone who wants the exact figures.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date

import pygal
from markupsafe import Markup
from pygal.style import Style

# Colours: the brand blue first, then a palette whose neighbours differ for common colour blindness, each at
# least 3:1 against white (WCAG 1.4.11 for graphics).
PALETTE = ("#0b5394", "#c2410c", "#6d28d9", "#15803d", "#b91c1c", "#0e7490")
STYLE = Style(
    background="#ffffff",
    plot_background="#ffffff",
    foreground="#1f2933",
    foreground_strong="#1f2933",
    foreground_subtle="#52606d",
    opacity="1",
    opacity_hover="1",
    colors=PALETTE,
    font_family="system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif",
    label_font_size=13,
    major_label_font_size=13,
    legend_font_size=14,
    title_font_size=16,
    value_font_size=12,
    tooltip_font_size=12,
)


def _config(**extra: object) -> dict[str, object]:
    return {
        "style": STYLE,
        "js": [],  # pygal's tooltips load a script from the internet: the pages must work offline
        "disable_xml_declaration": True,  # inlined into HTML
        "explicit_size": False,  # a viewBox only: the SVG scales to the width of its box
        "width": 800,
        "height": 320,
        "show_legend": True,
        "legend_at_bottom": True,
        "legend_at_bottom_columns": 4,
        "print_values": False,
        "margin": 12,
        "dots_size": 3,
        "stroke_style": {"width": 2.5},
        "truncate_label": -1,
        "min_scale": 1,
        "max_scale": 6,
        **extra,
    }


def _day_labels(days: Sequence[date]) -> list[str]:
    return [f"{day:%d %b}" for day in days]


def _major(labels: list[str], every: int) -> list[str]:
    return labels[::every] if every > 1 else labels


def both(draw: Callable[..., Markup], *args: object, **kwargs: object) -> Markup:
    """The chart drawn twice, for wide screens and for phones; CSS shows the one that fits."""
    return Markup('<div class="chart-wide">{}</div><div class="chart-narrow">{}</div>').format(
        draw(*args, **kwargs), draw(*args, narrow=True, **kwargs)
    )


def _render(chart: pygal.graph.graph.Graph) -> Markup:
    svg = chart.render(is_unicode=True)
    # The figure around the chart names it (aria-labelledby on the <figure>); the SVG is a picture of it.
    return Markup(svg.replace("<svg ", '<svg aria-hidden="true" focusable="false" ', 1))


def per_day(
    days: Sequence[date], series: dict[str, Sequence[int]], *, bars: bool = False, narrow: bool = False
) -> Markup:
    """One line (or bar group) per series over the days; x labels thinned so they never overlap.

    ``narrow``: drawn for a phone's width (fewer labels on a smaller canvas, so the text stays readable
    once scaled down); the page shows one or the other by screen width."""
    labels = _day_labels(days)
    every = max(1, len(labels) // (4 if narrow else 10))
    kind = pygal.Bar if bars else pygal.Line
    size = {"width": 420, "height": 320} if narrow else {}
    chart = kind(
        **_config(
            **size,
            x_label_rotation=0,
            show_minor_x_labels=False,
            x_labels_major=_major(labels, every),
            show_only_major_dots=False,
            fill=False,
            legend_at_bottom_columns=min(2 if narrow else 4, max(1, len(series))),
            show_legend=len(series) > 1,
        )
    )
    chart.x_labels = labels
    for name, values in series.items():
        chart.add(name, list(values))
    return _render(chart)


def per_step(steps: Sequence[str], series: dict[str, Sequence[int]], *, narrow: bool = False) -> Markup:
    """Grouped bars: one group per step, one bar per series."""
    size = {"width": 420, "height": 340, "legend_at_bottom_columns": 2} if narrow else {}
    chart = pygal.Bar(**_config(x_label_rotation=0 if len(steps) <= (2 if narrow else 6) else 30, **size))
    chart.x_labels = list(steps)
    for name, values in series.items():
        chart.add(name, list(values))
    return _render(chart)


def funnel(rows: Sequence[tuple[str, int]], *, narrow: bool = False) -> Markup:
    """Horizontal bars from the top of the funnel down: enrolled, then sent at each step."""
    chart = pygal.HorizontalBar(
        **_config(show_legend=False, width=420 if narrow else 1000, height=max(160, 40 * len(rows) + 40))
    )
    chart.x_labels = [label for label, _ in reversed(rows)]  # pygal draws the first label at the bottom
    chart.add("people", [count for _, count in reversed(rows)])
    return _render(chart)
