"""The web console: static files (HTML, JS modules, CSS) served as they are — no build step,
nothing fetched from elsewhere.  The page speaks to ``/api/v1`` with the token its user pasted."""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "console"


def wants_page(accept: str) -> bool:
    """Whether a request for ``/`` comes from a browser (it asks for ``text/html`` by name): it gets
    the console, everything else the JSON pointer to the API."""
    for part in accept.split(","):
        media, _, params = part.strip().partition(";")
        if media.strip().lower() in ("text/html", "application/xhtml+xml"):
            q = next((p.split("=", 1)[1] for p in params.split(";") if p.strip().startswith("q=")), "1")
            try:
                return float(q) > 0
            except ValueError:
                return True
    return False
