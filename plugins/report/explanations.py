"""The report's "Explanations" section: the run end's ``explanations/test.html`` (a few test
rows, :mod:`tuneforge.explain`) shown in the report, and the other pages ``tuneforge explain``
wrote there named.

The report stays self-contained (no link to another file): the test page's fragment, which
tuneforge wrote with every value escaped and images as data URIs, is embedded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

#: The run end's page of a few test rows, relative to the run folder.
TEST_PAGE = "explanations/test.html"
#: A test page larger than this is named, not embedded.
MAX_EMBED_BYTES = 4_000_000


def _fragment(page: Path) -> str:
    """The explanation fragment of a page :mod:`tuneforge.explain` wrote, or ""."""
    from tuneforge.explain import FRAGMENT_END, FRAGMENT_START

    try:
        if page.stat().st_size > MAX_EMBED_BYTES:
            return ""
        text = page.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""
    start, end = text.find(FRAGMENT_START), text.rfind(FRAGMENT_END)
    return text[start + len(FRAGMENT_START) : end] if 0 <= start < end else ""


def explanations_section(run_dir: Path, esc: Callable[[object], str]) -> str:
    """The section, or "" when the run folder has no ``explanations/*.html``."""
    folder = Path(run_dir) / "explanations"
    pages = sorted(p.name for p in folder.glob("*.html")) if folder.is_dir() else []
    if not pages:
        return ""
    parts = [
        "<section id=explanations><h2>Explanations</h2><p class=muted>What the best checkpoint's "
        "predictions rest on: token attributions (text), Grad-CAM (images) or permutation "
        "importance (tables); <code>tuneforge explain RUN --input FILE</code> explains other "
        "rows.</p>"
    ]
    if "test.html" in pages:
        fragment = _fragment(folder / "test.html")
        parts.append(
            f"<p>A few test rows, from <code>{esc(TEST_PAGE)}</code> (written at the end of the "
            "run):</p>" + (fragment or "<p class=muted>(too large to show here)</p>")
        )
    others = [n for n in pages if n != "test.html"]
    if others:
        names = ", ".join(f"<code>explanations/{esc(n)}</code>" for n in others)
        parts.append(f"<p>Other pages in the run folder: {names}.</p>")
    parts.append("</section>")
    return "".join(parts)
