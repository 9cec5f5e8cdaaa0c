"""The public surface: ``__all__`` and where errors can be imported from."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import textwrap

import pytest

import quickmj
import quickmj.errors


def isort_key(name: str) -> tuple[int, str]:
    """The order ruff's RUF022 keeps: CONSTANTS, then Classes, then the rest."""
    if re.fullmatch(r"[A-Z0-9_]+", name) and len(name) > 1:
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


@pytest.mark.parametrize("module", [quickmj, quickmj.errors])
def test_all_is_sorted_and_unique(module: object) -> None:
    """``__all__`` has no duplicates and keeps the isort-style order."""
    names = list(module.__all__)  # type: ignore[attr-defined]
    assert len(set(names)) == len(names)
    assert sorted(names, key=isort_key) == names


@pytest.mark.parametrize("module", [quickmj, quickmj.errors])
def test_every_exported_name_exists(module: object) -> None:
    """Each name in ``__all__`` is an attribute of the module."""
    missing = [n for n in module.__all__ if not hasattr(module, n)]  # type: ignore[attr-defined]
    assert [] == missing


def test_star_import_gives_exactly_all() -> None:
    """``from quickmj import *`` binds every exported name."""
    namespace: dict[str, object] = {}
    exec("from quickmj import *", namespace)
    assert set(quickmj.__all__) <= set(namespace)


@pytest.mark.parametrize("name", quickmj.errors.__all__)
def test_errors_importable_from_both_places(name: str) -> None:
    """Every public error is the same object in ``quickmj`` and ``quickmj.errors``."""
    assert name in quickmj.__all__
    assert getattr(quickmj, name) is getattr(quickmj.errors, name)
    assert issubclass(getattr(quickmj.errors, name), quickmj.QuickMJError)


def test_every_error_class_is_exported() -> None:
    """No QuickMJError subclass defined in quickmj.errors is left out of ``__all__``."""
    defined = {
        name
        for name, value in vars(quickmj.errors).items()
        if isinstance(value, type)
        and issubclass(value, quickmj.QuickMJError)
        and value.__module__ == "quickmj.errors"
    }
    assert defined == set(quickmj.errors.__all__)


def test_version() -> None:
    """``__version__`` is the package version string."""
    version = importlib.import_module("quickmj._version").__version__
    assert version == quickmj.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+([a-z0-9.+-]*)?", version)


@pytest.mark.parametrize(
    "name",
    ["AsyncClient", "Client", "Task", "TaskStatus", "SubmitResult", "Button", "RetryPolicy"],
)
def test_core_names_are_exported(name: str) -> None:
    """The names the README starts with are part of the public API."""
    assert name in quickmj.__all__


def test_wire_request_classes_are_not_exported() -> None:
    """The wire ``*Request`` classes are internal (users call methods); the transport's
    Request is the one public Request."""
    wire = [n for n in quickmj.__all__ if n.endswith("Request") and n != "Request"]
    assert [] == wire
    with pytest.raises(AttributeError, match="ImagineRequest"):
        _ = quickmj.ImagineRequest  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "name",
    [n for n in quickmj.__all__ if n[:1].isupper() and n not in quickmj.errors.__all__],
)
def test_public_classes_report_quickmj_as_their_module(name: str) -> None:
    """Public classes say ``quickmj`` (where users import them from), not a private module;
    errors keep ``quickmj.errors``."""
    value = getattr(quickmj, name)
    if isinstance(value, type):
        assert "quickmj" == value.__module__
    assert "quickmj.errors" == quickmj.QuickMJError.__module__


def test_dir_lists_the_lazy_names() -> None:
    """``dir(quickmj)`` shows every exported name before any was used."""
    assert set(quickmj.__all__) <= set(dir(quickmj))


def test_testing_helpers_are_the_same_objects() -> None:
    """quickmj.testing re-exports the transport types users also get from quickmj."""
    import quickmj.testing

    assert quickmj.testing.Request is quickmj.Request
    assert quickmj.testing.Response is quickmj.Response
    missing = [n for n in quickmj.testing.__all__ if not hasattr(quickmj.testing, n)]
    assert [] == missing
    with pytest.raises(AttributeError):
        _ = quickmj.testing.nothing_here  # type: ignore[attr-defined]


def test_imports_are_lazy() -> None:
    """``import quickmj`` loads almost nothing; aiohttp is imported only when a client is
    built without a transport of its own; quickmj.testing loads neither aiohttp nor pytest."""
    script = textwrap.dedent(
        """
        import sys
        import quickmj
        import quickmj.testing
        assert "aiohttp" not in sys.modules, "import quickmj"
        assert "pytest" not in sys.modules, "import quickmj.testing"
        assert "quickmj._client" not in sys.modules, "import quickmj"
        from quickmj.testing import MockTransport, Response
        mj = quickmj.AsyncClient("k", transport=MockTransport(lambda r: Response(200)))
        assert "aiohttp" not in sys.modules, "a client with its own transport"
        quickmj.AsyncClient("k")
        assert "aiohttp" in sys.modules
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert ("ok\n", "") == (result.stdout, result.stderr)
