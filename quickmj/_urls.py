"""URL pieces every layer needs, without I/O: one path segment, a URL as errors show it."""

from __future__ import annotations

from urllib.parse import quote, urlsplit

__all__ = ("display_url", "segment")


def segment(value: str) -> str:
    """``value`` as one encoded path segment: it can never reach another route.

    ``.`` and ``..`` are sent as ``%2E`` runs so no URL normaliser removes them; text that
    is not valid Unicode (a lone surrogate) raises UnicodeEncodeError for the caller to
    turn into its own typed error.
    """
    if value in (".", ".."):
        return "%2E" * len(value)
    return quote(value, safe="")


def display_url(url: str) -> str:
    """A URL without its query string (Discord signs URLs there; logs need not carry it)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<invalid URL>"
    return f"{parts.scheme}://{parts.netloc}{parts.path}"[:300]
