"""Shell completion scripts for ``quickmj``, generated from the argument parser itself."""

from __future__ import annotations

import argparse

__all__ = ("script",)


def _commands(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Each command and its options (the top level under ``""``)."""
    found: dict[str, list[str]] = {"": _options(parser)}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[name] = _options(sub)
    return found


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(opt for a in parser._actions for opt in a.option_strings if opt.startswith("--"))


def script(shell: str, parser: argparse.ArgumentParser) -> str:
    """The completion script for ``shell`` (bash, zsh or fish)."""
    commands = _commands(parser)
    names = " ".join(sorted(k for k in commands if k))
    if shell == "fish":
        lines = [f"complete -c quickmj -f -n '__fish_use_subcommand' -a '{names}'"]
        for name, opts in commands.items():
            cond = f"__fish_seen_subcommand_from {name}" if name else "__fish_use_subcommand"
            lines += [f"complete -c quickmj -n '{cond}' -l {o[2:]}" for o in opts]
        return "\n".join(lines)
    cases = "\n".join(
        f'        {name}) opts="{" ".join(opts)}" ;;' for name, opts in commands.items() if name
    )
    body = f"""_quickmj() {{
    local cur cmd opts
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    cmd="${{COMP_WORDS[1]}}"
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=( $(compgen -W "{names} {" ".join(commands[""])}" -- "$cur") )
        return
    fi
    case "$cmd" in
{cases}
        *) opts="" ;;
    esac
    COMPREPLY=( $(compgen -W "$opts" -f -- "$cur") )
}}
"""
    if shell == "zsh":
        return (
            "autoload -U +X bashcompinit && bashcompinit\n" + body + "complete -F _quickmj quickmj"
        )
    return body + "complete -F _quickmj quickmj"
