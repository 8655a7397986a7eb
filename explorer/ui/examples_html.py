"""Examples as HTML: every token coloured by the latent's activation relative to its max, the activating
token marked, the raw value and × max on hover; quantile groups with their range and share; a legend.

Rendering only: it takes records (`Example`, `ExampleGroup`) and returns strings.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from urllib.parse import urlencode

from explorer.latents.reader import Example, ExampleGroup

COLOUR = (255, 120, 0)
"""One colour scale for every example: transparent at 0, full at the latent's max."""
UNCOUNTED = "#9e9e9e"
MONO = "font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:0.9em"


def inspector_link(page: str, hook: str) -> Callable[[Example], str]:
    """A function giving each example's link to the prompt inspector (its request as the prompt)."""

    def link(example: Example) -> str:
        return f"{page}?{urlencode({'sae': hook, 'prompt': example.request})}"

    return link


def _token(text: str, value: float | None, peak: float, is_focus: bool) -> str:
    shown = html.escape(text, quote=True)
    if value is None:
        title = "not counted (first position or special token): the cache holds no activation here"
        return f'<span title="{title}" style="color:{UNCOUNTED}">{shown}</span>'
    share = value / peak if peak > 0 else 0.0
    alpha = min(max(share, 0.0), 1.0)
    title = f"{value:.4g} raw · {share:.2f} × max" + (" · the example's activating token" if is_focus else "")
    style = f"background:rgba({COLOUR[0]},{COLOUR[1]},{COLOUR[2]},{alpha:.2f});border-radius:2px"
    if is_focus:
        style += ";box-shadow:inset 0 -2px 0 #8b1a00;font-weight:700"
    return f'<span title="{html.escape(title, quote=True)}" style="{style}">{shown}</span>'


def example_html(example: Example, peak: float, link: Callable[[Example], str] | None = None) -> str:
    """One example on one line: its value, its tokens coloured, a ×N badge for merged duplicates and a
    link to the inspector."""
    values = example.values or [None] * len(example.context)
    tokens = "".join(
        _token(text, value, peak, n == example.focus)
        for n, (text, value) in enumerate(zip(example.context, values, strict=True))
    )
    extra = ""
    if example.count > 1:
        extra += (
            f' <span title="{example.count} identical or near-identical windows, shown once" '
            f'style="color:#555;background:#eee;border-radius:8px;padding:0 6px">×{example.count}</span>'
        )
    if link is not None:
        extra += (
            f' <a href="{html.escape(link(example), quote=True)}" target="_blank" rel="noopener" '
            'title="Open this example in the prompt inspector (a new tab)" '
            'style="font-size:0.8em">inspect</a>'
        )
    return (
        f'<div style="{MONO};white-space:pre-wrap;margin:3px 0;line-height:1.6">'
        f'<span style="color:grey">{example.value:8.3g} </span>{tokens}{extra}</div>'
    )


def examples_html(examples: list[Example], peak: float, link: Callable[[Example], str] | None = None) -> str:
    """Examples, one per line (see `example_html`)."""
    if not examples:
        return "<p><em>No examples.</em></p>"
    return "".join(example_html(e, peak, link) for e in examples)


def groups_html(groups: list[ExampleGroup], peak: float, link: Callable[[Example], str] | None = None) -> str:
    """Each quantile group, from the top down: its range (raw and × max), its share of the latent's
    non-zero activations, and its examples."""
    parts = []
    for n, group in enumerate(groups, start=1):
        relative = f"{group.low / peak:.2f}–{group.high / peak:.2f} × max" if peak > 0 else ""
        shown = sum(e.count for e in group.examples)
        parts.append(
            f'<div style="margin-top:10px;font-weight:600">Group {n}: {group.low:.3g} – {group.high:.3g} raw '
            f'<span style="color:grey;font-weight:400">({relative}) · {group.share:.1%} of its activations · '
            f"{shown} sampled</span></div>"
        )
        parts.append(examples_html(group.examples, peak, link))
    return "".join(parts)


def legend_html(peak: float) -> str:
    """The colour scale (0 to the latent's max) and the mark of tokens the cache does not count."""
    stops = ",".join(f"rgba({COLOUR[0]},{COLOUR[1]},{COLOUR[2]},{a})" for a in (0, 0.5, 1))
    return (
        '<div style="display:flex;align-items:center;gap:8px;font-size:0.85em;color:#444">'
        "<span>0</span>"
        f'<span style="display:inline-block;width:160px;height:12px;border:1px solid #ccc;'
        f'background:linear-gradient(to right,{stops})"></span>'
        f"<span>max = {peak:.4g} raw</span>"
        '<span style="box-shadow:inset 0 -2px 0 #8b1a00;font-weight:700;padding:0 3px">peak</span>'
        f'<span style="color:{UNCOUNTED}">grey: not counted</span></div>'
    )
