"""Removed public names fail with a pointer to what replaced them (docs/versioning.md)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import quickmj
from quickmj._removed import REMOVED


def test_removed_simulator_module_names_quickmj_testing() -> None:
    """``import quickmj.simulator`` says the simulator is quickmj.testing, and is still a
    ModuleNotFoundError for code that checks for optional modules."""
    sys.modules.pop("quickmj.simulator", None)
    with pytest.raises(ModuleNotFoundError, match=r"removed in quickmj 0\.2.*quickmj\.testing"):
        importlib.import_module("quickmj.simulator")
    done = subprocess.run(
        [sys.executable, "-c", "from quickmj.simulator import simulate"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert 1 == done.returncode
    assert "from quickmj.testing import simulate" in done.stderr.splitlines()[-1]


@pytest.mark.parametrize("name", sorted(REMOVED))
def test_from_import_of_a_removed_name_says_what_replaced_it(name: str) -> None:
    """``from quickmj import ImagineRequest`` is an ImportError with the pointer, not the
    bare "cannot import name" an AttributeError would become."""
    namespace: dict[str, object] = {}
    with pytest.raises(ImportError, match=rf"quickmj\.{name} was removed in quickmj 0\.2: "):
        exec(f"from quickmj import {name}", namespace)


@pytest.mark.parametrize("name", sorted(REMOVED))
def test_attribute_access_of_a_removed_name_stays_an_attribute_error(name: str) -> None:
    """``quickmj.X`` raises AttributeError with the pointer, so ``hasattr`` and
    ``getattr(..., default)`` keep working."""
    with pytest.raises(AttributeError, match=r"was removed in quickmj 0\.2: submits take"):
        getattr(quickmj, name)
    assert not hasattr(quickmj, name)
    assert getattr(quickmj, name, None) is None


def test_unknown_names_keep_the_usual_errors() -> None:
    """A name that never existed gets Python's own messages."""
    with pytest.raises(AttributeError, match="module 'quickmj' has no attribute 'Nope'"):
        quickmj.Nope  # type: ignore[attr-defined]  # noqa: B018
    with pytest.raises(ImportError, match="cannot import name 'Nope'"):
        exec("from quickmj import Nope", {})


def test_removed_names_are_not_exported() -> None:
    """No removed name is back in ``__all__`` or ``dir()``."""
    assert not set(REMOVED) & (set(quickmj.__all__) | set(dir(quickmj)))
