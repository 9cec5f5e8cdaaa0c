"""A griffe extension for the API reference (loaded by mkdocstrings, see mkdocs.yml).

Three things the static reading of the sources gets wrong, fixed here rather than by
bending the code to the documentation tool:

- The blocking ``Client`` and ``Job`` generate their methods from the async twins
  (``imagine = _blocking_submit(AsyncClient.imagine)``): griffe sees attributes without a
  docstring, and the reference showed the facade's properties only. Each one becomes a
  method with its twin's parameters and docstring and the blocking return type.
- Docstrings use a few reStructuredText spellings (``:class:`~quickmj.Submission```,
  ``Example::`` before an indented block) that Markdown shows raw: roles become inline
  code, ``::`` blocks fenced code.
- Private base classes (``_Facade[AsyncClient]``) are not shown as bases.

``.ci/check_site.py`` checks the built site for what this extension must have removed.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_TWIN = re.compile(r"^(_blocking\w*)\((\w+)\.(\w+)\)$")
_SUBMIT_RETURNS = re.compile(r"(\n\s*Returns:\n)(?:[ \t]+\S.*\n?)+")
_JOB_RETURNS = r"\1    The blocking `Job` of the accepted submit (`.wait()` for the Task).\n"
_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|exc|data|obj|const|type):`~?([^`]+)`")


def _returns(kind: str, twin: griffe.Function) -> str | griffe.Expr | None:
    """The blocking method's return annotation, as ``quickmj._sync`` builds it."""
    returns = twin.returns
    text = str(returns) if returns is not None else ""
    if kind == "_blocking_submit":
        return "Job"
    if kind == "_blocking_iter":
        return text.replace("AsyncIterator", "Iterator")
    if kind == "_blocking_cm":
        return text.replace("AsyncIterator", "AbstractContextManager")
    return returns


def _blocking_methods(cls: griffe.Class) -> None:
    """Turn ``name = _blocking*(Twin.name)`` attributes into documented methods."""
    for name, member in list(cls.members.items()):
        if member.is_alias or not isinstance(member, griffe.Attribute) or member.value is None:
            continue
        match = _TWIN.match(str(member.value))
        if match is None:
            continue
        kind, twin_class, twin_name = match.groups()
        twin_owner = cls.module.get_member(twin_class)
        twin_owner = twin_owner.final_target if twin_owner.is_alias else twin_owner
        twin = twin_owner.get_member(twin_name)
        if not isinstance(twin, griffe.Function):
            continue
        method = griffe.Function(
            name,
            lineno=member.lineno,
            endlineno=member.endlineno,
            parameters=twin.parameters,
            returns=_returns(kind, twin),
            docstring=(
                griffe.Docstring(twin.docstring.value, parser=twin.docstring.parser)
                if twin.docstring
                else None
            ),
        )
        if method.docstring is not None:
            text = method.docstring.value.replace("``async for ", "``for ")
            text = text.replace(" (when the Submission is awaited)", "")
            if kind == "_blocking_submit":
                text = _SUBMIT_RETURNS.sub(_JOB_RETURNS, text)
            method.docstring.value = text
        cls.set_member(name, method)


_ATTRS = re.compile(r"^(?:attrs?\.)?(?:frozen|define|mutable|s|attrs)\b")


def _field_default(value: str) -> str | None:
    """The default of an attrs field as written (None: required)."""
    call = re.match(r"^(?:attrs?\.)?(?:field|ib)\((.*)\)$", value, re.S)
    if call is None:
        return value
    args = call.group(1)
    if (default := re.search(r"\bdefault=([^,]+(?:\([^)]*\))?)", args)) is not None:
        return default.group(1).strip()
    if (factory := re.search(r"\bfactory=([\w.]+)", args)) is not None:
        return f"{factory.group(1)}()"
    return None


def _attrs_init(cls: griffe.Class) -> None:
    """Give an attrs class the ``__init__`` attrs generates (fields in order), so the
    reference shows its signature and ``Args:`` match parameters."""
    decorators = [str(d.value) for d in cls.decorators]
    if "__init__" in cls.members or not any(_ATTRS.match(d) for d in decorators):
        return
    kw_only = any("kw_only=True" in d for d in decorators)
    kind = (
        griffe.ParameterKind.keyword_only if kw_only else griffe.ParameterKind.positional_or_keyword
    )
    params = [griffe.Parameter("self", kind=griffe.ParameterKind.positional_or_keyword)]
    for name, member in cls.members.items():
        if member.is_alias or not isinstance(member, griffe.Attribute) or member.annotation is None:
            continue
        value = str(member.value) if member.value is not None else None
        if "ClassVar" in str(member.annotation) or (value and "init=False" in value):
            continue
        default = _field_default(value) if value is not None else None
        param_kind = (
            griffe.ParameterKind.keyword_only if value and "kw_only=True" in value else kind
        )
        params.append(
            griffe.Parameter(
                name.lstrip("_"), annotation=member.annotation, kind=param_kind, default=default
            )
        )
    init = griffe.Function("__init__", parameters=griffe.Parameters(*params), returns="None")
    cls.set_member("__init__", init)


def _fence_literal_blocks(text: str) -> str:
    """reST ``text::`` + indented block -> ``text:`` + a fenced block."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::") and i + 1 < len(lines):
            stripped = line.rstrip()[:-2].rstrip()
            out.append(stripped + ":" if stripped else "")
            i += 1
            while i < len(lines) and not lines[i].strip():
                i += 1
            base = len(line) - len(line.lstrip())
            block: list[str] = []
            while i < len(lines) and (
                not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > base
            ):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            indent = min(len(b) - len(b.lstrip()) for b in block if b.strip()) if block else 0
            pad = " " * base
            out += ["", pad + "```python", *(pad + b[indent:] for b in block), pad + "```", ""]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def clean_docstring(text: str) -> str:
    """A docstring as Markdown: reST roles as inline code, ``::`` blocks fenced."""
    text = _ROLE.sub(
        lambda m: f"`{m.group(1).rsplit('.', 1)[-1] if '~' in m.group(0) else m.group(1)}`", text
    )
    return _fence_literal_blocks(text)


def _walk(obj: griffe.Object) -> None:
    if obj.docstring is not None:
        obj.docstring.value = clean_docstring(obj.docstring.value)
    if isinstance(obj, griffe.Class):
        _blocking_methods(obj)
        _attrs_init(obj)
        obj.bases = [base for base in obj.bases if not str(base).lstrip().startswith("_")]
    for member in list(obj.members.values()):
        if not member.is_alias and isinstance(member, griffe.Object):
            _walk(member)


class QuickmjReference(griffe.Extension):
    """Applied once the whole package is loaded (the twins must exist)."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **_: Any) -> None:
        if pkg.name == "quickmj":
            _walk(pkg)
