"""``QUICKMJ_LOG``: quickmj's own log lines on stderr without writing logging code.

``QUICKMJ_LOG=debug`` (or ``info``, ``warning``, ``error``) gives the ``quickmj`` logger a
stderr handler at that level the first time a client is created (the CLI reads it too).
Applications that configure logging themselves need nothing from here: every line goes
to ``logging.getLogger("quickmj")`` whatever the variable says. No line ever holds the key.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping
from typing import IO

__all__ = ("configure", "configure_from_env")

logger = logging.getLogger("quickmj")

_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_HANDLER = "quickmj-env"  # the name of the handler added here (added once)
_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_done = False


def configure(level: str, stream: IO[str] | None = None) -> None:
    """Send quickmj's lines at ``level`` and above to ``stream`` (stderr by default)."""
    global _done
    _done = True
    if not any(h.get_name() == _HANDLER for h in logger.handlers):
        handler = logging.StreamHandler(stream)
        handler.set_name(_HANDLER)
        handler.setFormatter(logging.Formatter(_FORMAT))
        logger.addHandler(handler)
    logger.setLevel(level)


def configure_from_env(environ: Mapping[str, str] | None = None) -> str | None:
    """Apply ``QUICKMJ_LOG`` once per process; returns the level it set, if any.

    An unknown value is ignored with a warning (a typo should not go unnoticed).
    """
    if _done:
        return None
    value = (os.environ if environ is None else environ).get("QUICKMJ_LOG", "").strip()
    if not value:
        return None
    level = value.upper()
    if level not in _LEVELS:
        warnings.warn(
            f"QUICKMJ_LOG={value!r} is not one of debug, info, warning, error; ignored",
            stacklevel=3,
        )
        _mark_done()
        return None
    configure(level)
    return level


def _mark_done() -> None:
    global _done
    _done = True
