"""Every public name has a docstring, and the main entry points document their parameters.

The API reference (mkdocstrings, Google style) is built from these docstrings, so a
public name without one is a hole in the docs, and a parameter missing from ``Args:`` is
a question users have to answer by reading the source.

Walked: every name in ``__all__`` of ``quickmj``, ``quickmj.errors``, ``quickmj.testing``
and ``quickmj.webhook`` (plus a few public classes reachable from them), and each public
method and property those classes define (or inherit from a quickmj base class; the
machinery of ``object``, ``Exception`` and ``enum`` is skipped). Constants and type
aliases need an attribute docstring: a string literal right after the assignment, which
is what mkdocstrings shows (a ``#:`` comment is invisible to it). So does each public
field of an exported attrs class, as griffe (mkdocstrings' reader) sees the source: a
string right after the field, or an entry in the class docstring's ``Args:`` or
``Attributes:`` section.
"""

from __future__ import annotations

import ast
import enum
import functools
import importlib
import inspect
import re
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

PUBLIC_MODULES = ("quickmj", "quickmj.errors", "quickmj.testing", "quickmj.webhook")

#: Public classes not exported by those modules but handed to users (``Response.headers``).
EXTRA_CLASSES = ("quickmj._transport.Headers",)

#: Whose public methods must name every parameter in ``Args:``.
PARAM_CLASSES = (
    "quickmj.AsyncClient",
    "quickmj.AsyncJob",
    "quickmj.Submission",
    "quickmj.Task",
    "quickmj.RetryPolicy",
    "quickmj.AsyncTransport",
    "quickmj.Response",
    "quickmj._transport.Headers",
    "quickmj.webhook.WebhookReceiver",
    "quickmj.testing.MockTransport",
    "quickmj.testing.RunningSimulator",
    "quickmj.testing.Simulator",
)
#: Whose constructor parameters the class docstring must document (the reference merges
#: ``__init__`` into the class).
CONSTRUCTOR_CLASSES = (
    "quickmj.AsyncClient",
    "quickmj.Response",
    "quickmj._transport.Headers",
    "quickmj.webhook.WebhookReceiver",
    "quickmj.testing.MockTransport",
    "quickmj.testing.Simulator",
)
#: Module functions that must name every parameter in ``Args:``.
PARAM_FUNCTIONS = (
    "quickmj.run_batch",
    "quickmj.plan_batch",
    "quickmj._batch.reconcile",
    "quickmj.read_prompts",
    "quickmj.write_gallery",
    "quickmj.testing.simulate",
    "quickmj.testing.run_server",
)

_SECTIONS = (
    "Args",
    "Arguments",
    "Parameters",
    "Params",
    "Keyword Args",
    "Keyword Arguments",
    "Other Parameters",
)
_SECTION = re.compile(rf"^(\s*)(?:{'|'.join(_SECTIONS)}):\s*$")
#: A pointer to parameters documented once elsewhere, as httpx's "See ``httpx.request``":
#: "See :class:`~quickmj.AsyncClient` for ``notify_hook`` and ``state``".
_POINTER = re.compile(r"See :class:`~?(quickmj\.[\w.]+)` for ((?:``\w+``(?:, |,? and )?)+)")
#: Where a pointed-at docstring lists the shared parameters (``- ``name``: text``).
_SHARED_SECTION = re.compile(r"^(\s*)Common [a-z ]*arguments:\s*$")
_ANY_SECTION = re.compile(r"^(\s*)[A-Z][A-Za-z ]*:\s*$")


def resolve(dotted: str) -> Any:
    """The object a dotted path names (``quickmj.testing.Simulator``)."""
    module_name, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module_name), attr)


def exported() -> list[tuple[str, Any]]:
    """(qualified name, object) of every name in the public modules' ``__all__``."""
    out: list[tuple[str, Any]] = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        out += [(f"{module_name}.{n}", getattr(module, n)) for n in module.__all__]
    out += [(dotted, resolve(dotted)) for dotted in EXTRA_CLASSES]
    return out


def has_doc(obj: Any) -> bool:
    """A non-empty docstring of the object itself."""
    doc = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    if not isinstance(doc, str) or not doc.strip():
        return False
    # Docstrings Python writes for you are not documentation.
    return not (
        (isinstance(obj, type) and issubclass(obj, enum.Enum) and doc == "An enumeration.")
        or (isinstance(obj, type) and doc.startswith(f"{obj.__name__}("))
    )


def own_function(attr: Any) -> Callable[..., Any] | None:
    """The function behind a class attribute (method, static/class method, property)."""
    if isinstance(attr, (staticmethod, classmethod)):
        return attr.__func__  # type: ignore[no-any-return]
    if isinstance(attr, property):
        return attr.fget
    if isinstance(attr, functools.cached_property):
        return attr.func  # type: ignore[no-any-return]
    if inspect.isfunction(attr):
        return attr
    return None


def members(cls: type) -> Iterator[tuple[str, Any]]:
    """Public methods and properties of ``cls``, defined by it or by a quickmj base."""
    seen: set[str] = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("quickmj"):
            continue  # object, Exception, str, Enum, Protocol, ...: not ours to document
        for name, attr in vars(klass).items():
            if name.startswith("_") or name in seen:
                continue
            seen.add(name)
            if isinstance(attr, enum.Enum):
                continue  # enum members are values, not API
            if own_function(attr) is not None:
                yield name, attr


def documented_params(doc: str, section: re.Pattern[str] = _SECTION) -> set[str] | None:
    """Names listed in the docstring's ``Args:``-like sections; None without one."""
    lines = inspect.cleandoc(doc).splitlines()
    found: set[str] | None = None
    i = 0
    while i < len(lines):
        head = section.match(lines[i])
        i += 1
        if head is None:
            continue
        found = found if found is not None else set()
        indent = None
        while i < len(lines):
            line = lines[i]
            if line.strip() and len(line) - len(line.lstrip()) <= len(head.group(1)):
                break  # dedented: the section ended
            if line.strip():
                width = len(line) - len(line.lstrip())
                indent = width if indent is None else indent
                if width == indent:
                    entry = re.match(
                        r"\s*(?:- ``)?(\*{0,2}[A-Za-z_]\w*)(?:``)?\s*(?:\([^)]*\))?\s*:", line
                    )
                    if entry:
                        found.add(entry.group(1).lstrip("*"))
            i += 1
    return found


def pointed_params(doc: str) -> tuple[set[str], list[str]]:
    """Names ``doc`` documents by a pointer, and the pointers that lead nowhere.

    Each name must be listed in a "Common ... arguments:" section of the docstring
    pointed at, so a pointer cannot vouch for a parameter nobody documents.
    """
    names: set[str] = set()
    broken: list[str] = []
    for target, listed in _POINTER.findall(" ".join(doc.split())):
        wanted = set(re.findall(r"``(\w+)``", listed))
        there = documented_params(resolve(target).__doc__ or "", _SHARED_SECTION) or set()
        broken += [f"{n!r} (not in {target}'s common arguments)" for n in sorted(wanted - there)]
        names |= wanted & there
    return names, broken


def signature_params(fn: Callable[..., Any], *, skip_first: bool) -> list[str]:
    """Parameter names of ``fn`` (after ``self``/``cls`` for methods)."""
    params = list(inspect.signature(fn).parameters)
    return params[1:] if skip_first and params else params


def param_problems(
    where: str, fn: Callable[..., Any], doc: str | None, *, method: bool
) -> list[str]:
    """Parameters the docstring leaves out, and documented names that do not exist."""
    params = signature_params(fn, skip_first=method)
    if not params and not (doc and documented_params(doc)):
        return []
    listed = documented_params(doc or "")
    pointed, broken = pointed_params(doc or "")
    if listed is None and not pointed:
        return [f"{where}: no Args section for {', '.join(params)}"]
    listed = listed or set()
    problems = [f"{where}: broken pointer: {b}" for b in broken]
    problems += [
        f"{where}: parameter {p!r} not in Args" for p in params if p not in listed | pointed
    ]
    problems += [
        f"{where}: Args documents {p!r}, not a parameter"
        for p in sorted((listed | pointed) - set(params))
    ]
    return problems


# ---- data (constants and type aliases) ----


def _assignments(tree: ast.Module) -> Iterator[tuple[str, int]]:
    """(name, index in the module body) of each top-level assignment."""
    for index, node in enumerate(tree.body):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = list(node.targets)
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        for target in targets:
            if isinstance(target, ast.Name):
                yield target.id, index


def data_docstring(name: str, value: Any) -> bool | None:
    """Whether the module assigning ``name`` follows it with a string; None if not found."""
    for module_name, module in sorted(sys.modules.items()):
        if not module_name.startswith("quickmj") or vars(module).get(name, object()) is not value:
            continue
        source = Path(getattr(module, "__file__", "") or "")
        if source.suffix != ".py":
            continue
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for assigned, index in _assignments(tree):
            if assigned != name:
                continue
            after = tree.body[index + 1] if index + 1 < len(tree.body) else None
            return (
                isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
                and bool(after.value.value.strip())
            )
    return None


# ---- the tests ----


def missing_docstrings() -> list[str]:
    """Every public name, method and property without a docstring."""
    missing: list[str] = []
    for where, obj in exported():
        if isinstance(obj, type):
            if not has_doc(obj):
                missing.append(where)
            for name, attr in members(obj):
                fn = own_function(attr)
                if not has_doc(attr) and not (fn is not None and has_doc(fn)):
                    missing.append(f"{where}.{name}")
        elif inspect.isfunction(obj) or inspect.isroutine(obj):
            if not has_doc(obj):
                missing.append(where)
        else:
            found = data_docstring(where.rpartition(".")[2], obj)
            if found is None:
                missing.append(f"{where} (no top-level assignment found)")
            elif not found:
                missing.append(f"{where} (no attribute docstring after the assignment)")
    return sorted(set(missing))


def test_every_public_name_has_a_docstring() -> None:
    """Public names, and the public methods and properties of public classes."""
    missing = missing_docstrings()
    assert not missing, "without a docstring:\n  " + "\n  ".join(missing)


def test_entry_points_document_every_parameter() -> None:
    """Methods of the main classes and the module functions list each parameter in Args."""
    problems: list[str] = []
    for dotted in PARAM_CLASSES:
        cls = resolve(dotted)
        for name, attr in members(cls):
            if isinstance(attr, (property, functools.cached_property)):
                continue
            fn = own_function(attr)
            assert fn is not None
            method = not isinstance(attr, staticmethod)
            problems += param_problems(f"{dotted}.{name}", fn, fn.__doc__, method=method)
    for dotted in CONSTRUCTOR_CLASSES:
        cls = resolve(dotted)
        problems += param_problems(dotted, cls.__init__, cls.__doc__, method=True)
    for dotted in PARAM_FUNCTIONS:
        fn = resolve(dotted)
        problems += param_problems(dotted, fn, fn.__doc__, method=False)
    assert not problems, "parameters not documented:\n  " + "\n  ".join(problems)


# ---- fields of attrs classes, as griffe reads them ----

_FIELD_SECTIONS = frozenset({"attributes", "parameters", "other parameters"})


@functools.cache
def _griffe_package() -> Any:
    """quickmj as mkdocstrings reads it (static: from the sources, without importing)."""
    griffe = pytest.importorskip("griffe")
    root = Path(__file__).resolve().parent.parent
    return griffe.load("quickmj", search_paths=[str(root)], resolve_aliases=False)


def _griffe_class(module: Any, cls: type) -> Any:
    """The griffe object of ``cls`` (walked from the package by its defining module)."""
    obj = module
    for part in [*cls.__module__.split(".")[1:], *cls.__qualname__.split(".")]:
        obj = obj[part]
    return obj.final_target if obj.is_alias else obj


def undocumented_fields(gcls: Any, names: list[str]) -> list[str]:
    """``names`` that griffe finds neither an attribute docstring nor a docstring entry for."""
    listed: set[str] = set()
    if gcls.docstring is not None:
        for section in gcls.docstring.parse("google", warnings=False):
            if section.kind.value in _FIELD_SECTIONS:
                listed |= {entry.name for entry in section.value}
    return [
        name
        for name in names
        if name not in listed
        and not (name in gcls.members and gcls.members[name].docstring is not None)
    ]


def exported_attrs_classes() -> list[tuple[str, type]]:
    """(qualified name, class) of every exported attrs class, each class once."""
    seen: set[type] = set()
    out: list[tuple[str, type]] = []
    for where, obj in exported():
        if isinstance(obj, type) and attrs.has(obj) and obj not in seen:
            seen.add(obj)
            out.append((where, obj))
    return out


def test_every_public_field_has_a_docstring() -> None:
    """Each public field of an exported attrs class is documented where griffe reads it."""
    package = _griffe_package()
    missing: list[str] = []
    for where, cls in exported_attrs_classes():
        names = [f.name for f in attrs.fields(cls) if not f.name.startswith("_")]
        gcls = _griffe_class(package, cls)
        missing += [f"{where}.{name}" for name in undocumented_fields(gcls, names)]
    assert not missing, "fields without a docstring:\n  " + "\n  ".join(missing)


def test_a_comment_is_not_a_field_docstring() -> None:
    """The field check sees a string after the field or a docstring entry, not ``#:``."""
    griffe = pytest.importorskip("griffe")
    module = griffe.visit(
        "sample",
        filepath=Path("sample.py"),
        code=textwrap.dedent(
            '''\
            import attrs

            @attrs.frozen
            class Sample:
                """A sample.

                Attributes:
                    listed: documented in the class docstring.
                """

                #: invisible to griffe
                commented: int
                stringed: int
                """Documented."""
                listed: int
                bare: int
            '''
        ),
    )
    names = ["commented", "stringed", "listed", "bare"]
    assert ["commented", "bare"] == undocumented_fields(module["Sample"], names)


# ---- the checker checks itself ----


def test_documented_params_reads_google_sections() -> None:
    """The Args parser finds names, typed names and star-args, and stops at the next section."""
    doc = textwrap.dedent(
        """\
        Summary.

        Args:
            first: text
                continued: not a name.
            second (int): text
            *args: more
            **kwargs: the rest

        Returns:
            value: not a parameter
        """
    )
    assert {"first", "second", "args", "kwargs"} == documented_params(doc)
    assert documented_params("Summary only.") is None


def test_missing_docstrings_are_reported() -> None:
    """The walk reports an undocumented method and an undocumented parameter."""

    class Sample:
        """Documented."""

        def method(self, value: int) -> int:
            return value

    assert not has_doc(Sample.method)
    assert ["S.m: no Args section for value"] == param_problems(
        "S.m", Sample.method, Sample.method.__doc__, method=True
    )


def test_pointers_document_only_what_their_target_lists() -> None:
    """A "See ... for ``x``" pointer documents ``x`` only if the target's common section has it."""

    def submit(
        self: object, prompt: str, *, notify_hook: str | None = None, state: str | None = None
    ) -> None:
        """Submit.

        Args:
            prompt: text

        See :class:`~quickmj.AsyncClient` for ``notify_hook`` and ``state``.
        """

    doc = submit.__doc__ or ""
    assert [] == param_problems("s", submit, doc, method=True)
    assert [
        "s: broken pointer: 'retry' (not in quickmj.AsyncClient's common arguments)",
        "s: parameter 'state' not in Args",
    ] == param_problems("s", submit, doc.replace("``state``", "``retry``"), method=True)


@pytest.mark.parametrize("dotted", PARAM_CLASSES + CONSTRUCTOR_CLASSES + PARAM_FUNCTIONS)
def test_checked_names_exist(dotted: str) -> None:
    """The lists above name real objects (a rename must not silently skip a check)."""
    assert resolve(dotted) is not None
