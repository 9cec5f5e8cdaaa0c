"""Shell completion scripts for ``quickmj``, generated from the argument parser itself.

The walk uses each action's documented attributes (``option_strings``, ``choices``,
``nargs``, ``metavar``, ``dest``). argparse has no public way to list a parser's actions,
so its ``_actions`` list is read in one place (:func:`_actions`) and nowhere else.

The scripts find the command as the first word that is a command name (so global options
before it, ``quickmj --json ima<TAB>``, work), complete option values from their choices
(``--upscale <TAB>`` offers ``U1 U2 U3 U4 all``), and fall back to file names only where
a value is a file or a directory.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Iterator

__all__ = ("script",)

#: Values offered for options whose metavar describes choices argparse does not check.
_METAVAR_CHOICES = {"U1..U4|all": ("U1", "U2", "U3", "U4", "all")}
#: Metavars whose values are paths (completed as file names).
_PATHS = {"DIR", "FILE", "FILE|URL", "PNG", "IMAGE", "OUT"}


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return list(parser._actions)  # the one private read: argparse lists actions nowhere else


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}
    for action in _actions(parser):
        if isinstance(action.choices, dict):  # the subcommands' action maps names to parsers
            found.update(action.choices)
    return found


def _options(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str]]:
    """(option, what its value completes to): ``""`` takes no value, ``"@files"`` paths,
    anything else a space-separated list of words."""
    for action in _actions(parser):
        for opt in action.option_strings:
            if not opt.startswith("--"):
                continue
            if action.nargs == 0:
                yield opt, ""
            elif action.choices is not None:
                yield opt, " ".join(str(c) for c in action.choices)
            elif isinstance(action.metavar, str) and action.metavar in _METAVAR_CHOICES:
                yield opt, " ".join(_METAVAR_CHOICES[action.metavar])
            elif isinstance(action.metavar, str) and action.metavar in _PATHS:
                yield opt, "@files"
            else:
                yield opt, "@any"


def _positional_files(parser: argparse.ArgumentParser) -> bool:
    """Whether the command's positional arguments are paths (then offer file names)."""
    return any(
        not a.option_strings and (a.metavar in _PATHS or a.dest == "file") for a in _actions(parser)
    )


def _positional_choices(parser: argparse.ArgumentParser) -> list[str]:
    return [
        str(c)
        for a in _actions(parser)
        if not a.option_strings and a.choices is not None
        for c in a.choices
    ]


def _bash(parser: argparse.ArgumentParser) -> str:
    commands = _commands(parser)
    top = dict(_options(parser))
    values: dict[str, str] = dict(top)
    cases = []
    for name, sub in commands.items():
        opts = dict(_options(sub))
        for opt, words in opts.items():  # one option, several commands: offer every value
            seen = values.get(opt, "").split()
            values[opt] = " ".join(dict.fromkeys(seen + words.split()))
        files = "1" if _positional_files(sub) else ""
        choices = " ".join(_positional_choices(sub))
        cases.append(
            f"        {name}) opts={shlex.quote(' '.join(sorted(opts)))}; files={files}; "
            f"words={shlex.quote(choices)} ;;"
        )
    value_cases = [
        f'        {opt}) COMPREPLY=( $(compgen -W {shlex.quote(words)} -- "$cur") ); return ;;'
        for opt, words in sorted(values.items())
        if words and not words.startswith("@")
    ]
    file_opts = "|".join(sorted(o for o, w in values.items() if w == "@files"))
    any_opts = "|".join(sorted(o for o, w in values.items() if w == "@any"))
    names = " ".join(sorted(commands))
    return f"""_quickmj() {{
    local cur prev cmd opts files words i w
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    case "$prev" in
{chr(10).join(value_cases)}
        {file_opts or "--no-such-option"}) COMPREPLY=( $(compgen -f -- "$cur") ); return ;;
        {any_opts or "--no-such-option"}) COMPREPLY=(); return ;;
    esac
    cmd=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${{COMP_WORDS[i]}}"
        case " {names} " in *" $w "*) cmd="$w"; break ;; esac
    done
    case "$cmd" in
        "") COMPREPLY=( $(compgen -W {shlex.quote(names + " " + " ".join(sorted(top)))} -- "$cur") )
            return ;;
{chr(10).join(cases)}
        *) opts=""; files=""; words="" ;;
    esac
    if [[ "$cur" != -* && -n "$words" ]]; then
        COMPREPLY=( $(compgen -W "$words" -- "$cur") )
    elif [[ "$cur" == -* || -z "$files" ]]; then
        COMPREPLY=( $(compgen -W "$opts" -- "$cur") )
    else
        COMPREPLY=( $(compgen -f -- "$cur") )
    fi
}}
"""


def _fish(parser: argparse.ArgumentParser) -> str:
    commands = _commands(parser)
    names = " ".join(sorted(commands))
    lines = [f"complete -c quickmj -f -n '__fish_use_subcommand' -a '{names}'"]
    scopes = [("__fish_use_subcommand", parser)]
    scopes += [(f"__fish_seen_subcommand_from {n}", p) for n, p in commands.items()]
    for cond, sub in scopes:
        for opt, words in _options(sub):
            line = f"complete -c quickmj -n '{cond}' -l {opt[2:]}"
            if words == "@files":
                line += " -r -F"
            elif words == "@any":
                line += " -r"
            elif words:
                line += f" -x -a {shlex.quote(words)}"
            lines.append(line)
    return "\n".join(lines)


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    """The completion script for ``shell`` (bash, zsh or fish)."""
    if shell == "fish":
        return _fish(parser)
    body = _bash(parser)
    if shell == "zsh":
        return (
            "autoload -U +X bashcompinit && bashcompinit\n" + body + "complete -F _quickmj quickmj"
        )
    return body + "complete -F _quickmj quickmj"
