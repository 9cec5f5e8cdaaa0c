"""Check the built documentation site: the API reference is complete and reads as prose.

Usage: python .ci/check_site.py SITE_DIR

- every name in ``quickmj.__all__`` and ``quickmj.testing.__all__`` has an anchor in the
  reference (``id="quickmj.X"``, ``id="quickmj.testing.X"``; errors may be documented as
  ``quickmj.errors.X``), and so does every public method of ``Client`` and ``Job``;
- no page shows a raw reStructuredText role (``:class:`X```), a stray ``::`` literal
  marker, a private base class (``Bases: _Facade[...]``) or a pointer to "the module
  docstring" (not part of the site).

Exit status 0 when clean, 1 with one line per problem otherwise.
"""

from __future__ import annotations

import html
import re
import sys
from collections.abc import Iterator
from pathlib import Path

# Markdown turns the role's backticks into <code>, so the visible text is ":class:X".
ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|exc|data|obj|const):(?=[`~\w])")
STRAY_LITERAL = re.compile(r"\w::(?:\s|$)")
PRIVATE_BASE = re.compile(r"Bases:\s*(?:<[^>]+>\s*)*_\w")
PHRASES = ("module docstring",)


def text_of(page: str) -> str:
    """The visible text of a page (tags, scripts and code blocks left out)."""
    page = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S)
    page = re.sub(r"<pre\b.*?</pre>", " ", page, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", "", page))


def pages(site: Path) -> Iterator[Path]:
    yield from sorted(p for p in site.rglob("*.html") if p.name != "404.html")


def expected_anchors() -> set[str]:
    import quickmj
    import quickmj.testing
    from quickmj import Client, Job

    names = {f"quickmj.{n}" for n in quickmj.__all__}
    names |= {f"quickmj.testing.{n}" for n in quickmj.testing.__all__}
    for cls in (Client, Job):
        names |= {
            f"quickmj.{cls.__name__}.{n}"
            for n, v in vars(cls).items()
            if not n.startswith("_") and (callable(v) or isinstance(v, property))
        }
    return names


def problems(site: Path) -> Iterator[str]:
    anchors: set[str] = set()
    for path in pages(site):
        page = path.read_text(encoding="utf-8")
        anchors |= set(re.findall(r'\bid="([^"]+)"', page))
        text = text_of(page)
        where = path.relative_to(site)
        for pattern, what in (
            (ROLE, "a raw reStructuredText role"),
            (STRAY_LITERAL, "a stray '::'"),
            (PRIVATE_BASE, "a private base class"),
        ):
            for match in pattern.finditer(text):
                excerpt = text[max(0, match.start() - 40) : match.end() + 40].replace("\n", " ")
                yield f"{where}: {what}: ...{excerpt}..."
        for phrase in PHRASES:
            if phrase in text:
                yield f"{where}: points to {phrase!r}, which the site does not show"
    for name in sorted(expected_anchors()):
        errors_name = name.replace("quickmj.", "quickmj.errors.", 1)
        if name not in anchors and errors_name not in anchors:
            yield f"no anchor for {name} in the API reference"


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not Path(argv[1], "index.html").is_file():
        print("usage: check_site.py SITE_DIR (a built mkdocs site)", file=sys.stderr)
        return 2
    found = list(problems(Path(argv[1])))
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} problem(s) in the built site", file=sys.stderr)
        return 1
    print("site check: reference complete, no raw roles")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
