"""A funnel chart as plain SVG, rendered on the server: one bar per step, sized by emails sent."""

from __future__ import annotations

from markupsafe import Markup, escape

from nurture.stats import SequenceStats

BAR_HEIGHT = 28
GAP = 10
LABEL_WIDTH = 180
BAR_WIDTH = 420


def funnel_svg(stats: SequenceStats) -> Markup:
    rows = [("enrolled", stats.enrolled)] + [(step.key, step.sent) for step in stats.steps]
    top = max((count for _, count in rows), default=0) or 1
    height = len(rows) * (BAR_HEIGHT + GAP) + GAP
    width = LABEL_WIDTH + BAR_WIDTH + 80
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" aria-labelledby="funnel-title">',
        f'<title id="funnel-title">Funnel for {escape(stats.slug)}: enrolled, then sent per step</title>',
    ]
    for index, (label, count) in enumerate(rows):
        y = GAP + index * (BAR_HEIGHT + GAP)
        bar = max(1, round(BAR_WIDTH * count / top)) if count else 0
        offset = LABEL_WIDTH + (BAR_WIDTH - bar) / 2  # centred bars: the funnel shape
        parts.append(
            f'<g class="funnel-row" data-step="{escape(label)}" data-count="{count}">'
            f'<text x="0" y="{y + BAR_HEIGHT * 0.7:.0f}" font-size="14">{escape(label)}</text>'
            f'<rect x="{offset:.0f}" y="{y}" width="{bar}" height="{BAR_HEIGHT}" fill="#0b5394"/>'
            f'<text x="{LABEL_WIDTH + BAR_WIDTH + 8}" y="{y + BAR_HEIGHT * 0.7:.0f}" font-size="14">'
            f"{count}</text></g>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))
