"""Every ```python block of README.md and docs/*.md runs as written, against the relay
simulator, or is marked as a fragment of a runnable example that exists; so the docs
cannot drift from the code.

Markers, on the line right before a block's opening fence (HTML comments: invisible on
GitHub and on the site):

- ``<!-- fragment: NAME -->``: the block is an excerpt, not run. NAME is a file of the
  repository (``examples/webhook.py``) or the name of a runnable block;
- ``<!-- example: NAME -->``: names a runnable block so fragments can point to it.

A block that defines ``test_`` functions runs as a user's pytest file; any other block
runs as a script with ``QUICKMJ_API_KEY`` and ``QUICKMJ_BASE_URL`` pointing at a
simulator that accepts the keys the docs use (``sk-a``, ``sk-b``, ``sk-c``).

The docs' quick start (the bash block after ``<!-- docs:quickstart -->``) runs too, and
the site checker (``.ci/check_site.py``) and the reference's docstring cleanup
(``docs/_griffe.py``) are tested on small inputs.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

from quickmj.testing import SimulatorConfig, simulate

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!--\s*(fragment|example):\s*(.+?)\s*-->$")
DOC_KEYS = ("sim-key", "sk-a", "sk-b", "sk-c")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    code: str
    marker: str | None  # "fragment" or "example"
    name: str | None

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks_of(path: Path) -> list[Block]:
    """The ```python blocks of one Markdown file, with the marker before each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != "```python":
            i += 1
            continue
        before = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        match = MARKER.match(before)
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        code = "\n".join(lines[i + 1 : end]) + "\n"
        found.append(Block(path, i + 1, code, match and match.group(1), match and match.group(2)))
        i = end + 1
    return found


BLOCKS = [block for path in SOURCES for block in blocks_of(path)]
RUNNABLE = [b for b in BLOCKS if b.marker != "fragment"]
FRAGMENTS = [b for b in BLOCKS if b.marker == "fragment"]
EXAMPLE_NAMES = {b.name for b in RUNNABLE if b.marker == "example"}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("QUICKMJ_", "PYTEST_"))}
    return {**env, **extra}


def test_the_collector_sees_the_docs() -> None:
    """Blocks are found in the README and in several docs pages (a broken parser would
    otherwise pass by running nothing)."""
    files = {b.path.name for b in BLOCKS}
    assert {"README.md", "index.md", "quickstart.md", "throughput.md"} <= files
    assert len(RUNNABLE) >= 8
    assert len(EXAMPLE_NAMES) == len([b for b in RUNNABLE if b.marker == "example"])


@pytest.mark.parametrize("block", FRAGMENTS, ids=lambda b: b.id)
def test_fragment_names_a_runnable_example(block: Block) -> None:
    """A fragment points to an example file or a named runnable block that exists."""
    assert block.name, block.id
    assert (ROOT / block.name).is_file() or block.name in EXAMPLE_NAMES, (
        f"{block.id}: fragment of {block.name!r}, which is neither a file of the repository "
        f"nor a block marked <!-- example: {block.name} -->"
    )


@pytest.mark.parametrize("block", RUNNABLE, ids=lambda b: b.id)
async def test_block_runs_as_written(block: Block, tmp_path: Path) -> None:
    """The block, copied into a file, exits 0 with no traceback."""
    is_test = re.search(r"^(async )?def test_", block.code, re.M) is not None
    script = tmp_path / ("test_snippet.py" if is_test else "snippet.py")
    script.write_text(block.code, encoding="utf-8")
    config = SimulatorConfig(run_seconds=0.1, api_keys=DOC_KEYS)
    async with simulate(config) as relay:
        env = _env(QUICKMJ_API_KEY=relay.api_key, QUICKMJ_BASE_URL=relay.base_url)
        if is_test:
            argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                    "-o", "asyncio_mode=strict",
                    "-o", "asyncio_default_fixture_loop_scope=function", str(script)]  # fmt: skip
        else:
            argv = [sys.executable, str(script)]
        proc = await asyncio.create_subprocess_exec(
            *argv, cwd=tmp_path, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    report = f"{block.id}\n--- stdout\n{out.decode()[-2000:]}\n--- stderr\n{err.decode()[-2000:]}"
    assert 0 == proc.returncode, report
    assert "Traceback" not in err.decode(), report


def test_docs_quick_start_runs_in_an_empty_folder(tmp_path: Path) -> None:
    """The quick start page's batch needs nothing from the repository (no
    examples/prompts.txt): run in an empty folder, it saves every image."""
    text = (ROOT / "docs" / "quickstart.md").read_text(encoding="utf-8")
    match = re.search(r"<!-- docs:quickstart -->\n```bash\n(.*?)```", text, re.S)
    assert match
    quickmj = f"{shlex.quote(sys.executable)} -m quickmj"
    commands = re.sub(r"^quickmj ", quickmj + " ", match.group(1), flags=re.M)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", commands], cwd=tmp_path, env=_env(),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert 0 == done.returncode, done.stdout + done.stderr
    prompts = (tmp_path / "prompts.txt").read_text().splitlines()
    assert len(list((tmp_path / "out" / "images").glob("*.png"))) == len(prompts) > 0


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem.lstrip("_"), path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _site(tmp_path: Path, body: str, anchors: bool) -> Path:
    check = _load(ROOT / ".ci" / "check_site.py")
    ids = "".join(f'<h2 id="{a}">x</h2>' for a in check.expected_anchors()) if anchors else ""
    (tmp_path / "index.html").write_text(f"<html><body>{ids}{body}</body></html>", "utf-8")
    return tmp_path


def test_site_check_accepts_a_complete_clean_site(tmp_path: Path) -> None:
    """Every expected anchor present, prose without reST: no problem reported."""
    check = _load(ROOT / ".ci" / "check_site.py")
    site = _site(tmp_path, "<p>Use <code>Client</code>: see <pre>a::b</pre></p>", anchors=True)
    assert [] == list(check.problems(site))


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("<p>Returns a :class:<code>~quickmj.Submission</code>.</p>", "raw reStructuredText role"),
        ("<p>Raised in this order::</p>", "stray '::'"),
        ("<p>Bases: <code>_Facade[AsyncClient]</code></p>", "private base class"),
        ("<p>See the module docstring.</p>", "module docstring"),
    ],
)
def test_site_check_finds_what_a_reader_should_not_see(
    tmp_path: Path, body: str, problem: str
) -> None:
    """Each leftover of reStructuredText or of private code is reported with its page."""
    check = _load(ROOT / ".ci" / "check_site.py")
    found = list(check.problems(_site(tmp_path, body, anchors=True)))
    assert len(found) == 1 and problem in found[0] and found[0].startswith("index.html")


def test_site_check_names_missing_anchors(tmp_path: Path) -> None:
    """A public name absent from the reference is reported by its import path."""
    check = _load(ROOT / ".ci" / "check_site.py")
    found = set(check.problems(_site(tmp_path, "", anchors=False)))
    assert "no anchor for quickmj.AccountPool in the API reference" in found
    assert "no anchor for quickmj.testing.simulate in the API reference" in found
    assert "no anchor for quickmj.Client.imagine in the API reference" in found


def test_reference_docstrings_become_markdown() -> None:
    """The griffe extension turns reST roles into inline code and ``::`` blocks into
    fenced code."""
    pytest.importorskip("griffe")
    ext = _load(ROOT / "docs" / "_griffe.py")
    text = "Returns a :class:`~quickmj.Submission` (:meth:`AsyncJob.wait`). Use it so::\n\n"
    text += "    async with x:\n        pass\n\nAfter."
    assert ext.clean_docstring(text) == (
        "Returns a `Submission` (`AsyncJob.wait`). Use it so:\n\n```python\n"
        "async with x:\n    pass\n```\n\nAfter."
    )
