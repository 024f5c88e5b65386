"""``upload-engine completion bash|zsh|fish``: a shell completion script, generated from the
parser itself (so every command, flag and choice is in it, and stays in it).

Install (one line each): bash ``eval "$(upload-engine completion bash)"`` in ``~/.bashrc``;
zsh ``upload-engine completion zsh > "${fpath[1]}/_upload-engine"``; fish ``upload-engine
completion fish > ~/.config/fish/completions/upload-engine.fish``.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from engine.cli.app import DeferredParser
from engine.cli.output import Outcome

__all__ = ["Command", "commands", "register", "render"]

SHELLS = ("bash", "zsh", "fish")
PROG = "upload-engine"
#: values a ``--to`` may take besides ``s3://BUCKET/KEY``
_PATH_DESTS = {"state_dir", "dir", "report", "sandbox_dir", "storage", "ca_bundle", "data_dir"}


@dataclass
class Option:
    flags: list[str]
    help: str
    takes_value: bool
    choices: list[str]
    is_path: bool


@dataclass
class Command:
    """A command path (``["sandbox", "serve"]``), its help and options, and whether it takes
    file arguments."""

    path: list[str]
    help: str
    options: list[Option] = field(default_factory=list)
    files: bool = False


def _options(parser: argparse.ArgumentParser) -> list[Option]:
    out = []
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        choices = [str(c) for c in action.choices or ()]
        if "--to" in action.option_strings and not choices:
            choices = ["sandbox", "sandbox-matterport", "sandbox-speckle", "matterport"]
            choices += ["speckle", "s3://"]
        out.append(
            Option(
                list(action.option_strings),
                " ".join((action.help or "").split()),
                action.nargs != 0,
                choices,
                action.dest in _PATH_DESTS,
            )
        )
    return out


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, str, Any]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def commands(parser: argparse.ArgumentParser) -> list[Command]:
    """Every command of ``parser`` (the main one first, path ``[]``), depth first."""
    out: list[Command] = []

    def walk(p: argparse.ArgumentParser, path: list[str], help_text: str) -> None:
        if isinstance(p, DeferredParser):  # a command adds its options on first use
            p.ready()
        files = any(not a.option_strings and a.nargs in ("+", "*", None) for a in p._actions)
        files = files and not any(isinstance(a, argparse._SubParsersAction) for a in p._actions)
        out.append(Command(path, help_text, _options(p), files))
        for name, sub_help, sub in _subparsers(p):
            walk(sub, [*path, name], sub_help)

    walk(parser, [], parser.description or "")
    return out


def register(p: argparse.ArgumentParser) -> None:
    """The argument of ``completion`` (its name and line in ``--help``: ``app.COMMANDS``)."""
    p.add_argument("shell", choices=SHELLS)
    p.set_defaults(runner=run_completion)


async def run_completion(args: argparse.Namespace) -> Outcome:
    from engine.cli.app import build_parser

    return Outcome(render(args.shell, build_parser()))


def render(shell: str, parser: argparse.ArgumentParser) -> str:
    cmds = commands(parser)
    return {"bash": _bash, "zsh": _zsh, "fish": _fish}[shell](cmds)


# ---- bash ------------------------------------------------------------------------------------


def _bash(cmds: list[Command]) -> str:
    fn = "_upload_engine"
    cases, values = [], []
    for c in cmds:
        words = " ".join(o for opt in c.options for o in opt.flags)
        subs = " ".join(
            s.path[-1] for s in cmds if len(s.path) == len(c.path) + 1 and s.path[:-1] == c.path
        )
        cases.append(
            f'        "{" ".join(c.path)}") words="{words}"; subs="{subs}"; files={int(c.files)};;'
        )
    for opt in {o.flags[-1]: o for c in cmds for o in c.options if o.takes_value}.values():
        pattern = "|".join(opt.flags)
        if opt.choices:
            values.append(
                f'        {pattern}) COMPREPLY=($(compgen -W "{" ".join(opt.choices)}" '
                '-- "$cur")); return;;'
            )
        elif opt.is_path:
            values.append(f'        {pattern}) COMPREPLY=($(compgen -f -- "$cur")); return;;')
        else:
            values.append(f"        {pattern}) return;;")
    names = sorted({w for c in cmds for w in c.path})
    return "\n".join(
        [
            f'# {PROG} completion for bash: eval "$({PROG} completion bash)"',
            f"{fn}() {{",
            '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"',
            '    local path="" i w words subs files',
            "    for ((i = 1; i < COMP_CWORD; i++)); do",
            '        w="${COMP_WORDS[i]}"',
            f'        case "$w" in {"|".join(names)}) path="${{path:+$path }}$w";; esac',
            "    done",
            '    case "$prev" in',
            *values,
            "    esac",
            '    case "$path" in',
            *cases,
            '        *) words=""; subs=""; files=1;;',
            "    esac",
            '    if [[ "$cur" == -* ]]; then',
            '        COMPREPLY=($(compgen -W "$words" -- "$cur"))',
            '    elif [[ -n "$subs" ]]; then',
            '        COMPREPLY=($(compgen -W "$subs" -- "$cur"))',
            "    elif [[ $files == 1 ]]; then",
            '        COMPREPLY=($(compgen -f -- "$cur"))',
            "    else",
            '        COMPREPLY=($(compgen -W "$words" -- "$cur"))',
            "    fi",
            "}",
            f"complete -o default -F {fn} {PROG}",
            "",
        ]
    )


# ---- zsh -------------------------------------------------------------------------------------


def _zq(text: str) -> str:
    """Text inside a single-quoted zsh ``_arguments`` spec: no quotes, brackets or colons."""
    return re.sub(r"[\[\]:'\\`$]", " ", text)[:70].strip()


def _zsh_spec(o: Option) -> str:
    flags = o.flags
    names = "{" + ",".join(flags) + "}" if len(flags) > 1 else flags[0]
    excl = f"({' '.join(flags)})" if len(flags) > 1 else ""
    if not o.takes_value:
        return f"'{excl}'{names}'[{_zq(o.help)}]'" if excl else f"'{names}[{_zq(o.help)}]'"
    action = f"({' '.join(o.choices)})" if o.choices else ("_files" if o.is_path else " ")
    spec = f"[{_zq(o.help)}]:{_zq(flags[-1].lstrip('-'))}:{action}"
    return f"'{excl}'{names}'{spec}'" if excl else f"'{names}{spec}'"


def _zsh(cmds: list[Command]) -> str:
    lines = [f"#compdef {PROG}", f"# {PROG} completion for zsh", "", "_upload_engine() {"]
    lines += ["  local curcontext=$curcontext state line", "  typeset -A opt_args"]
    lines += ["  local cmd=${(j: :)${(@)words[2,CURRENT-1]:#-*}}", '  case "$cmd" in']
    for c in sorted(cmds, key=lambda c: -len(c.path)):
        subs = [s for s in cmds if s.path[:-1] == c.path and len(s.path) == len(c.path) + 1]
        pattern = (" ".join(c.path) + "*") if c.path else "*"
        specs = [_zsh_spec(o) for o in c.options]
        if subs:
            listed = " ".join(f"'{s.path[-1]}:{_zq(s.help)}'" for s in subs)
            specs.append(f"'1:command:(({listed}))'")
        elif c.files:
            specs.append("'*:file:_files'")
        lines.append(f'    "{pattern}")')
        if c.path:  # the command's words out of the way: _arguments sees its options only
            lines.append(f"      shift {len(c.path)} words; (( CURRENT -= {len(c.path)} ))")
        lines.append("      _arguments -s " + " \\\n        ".join(specs) + " ;;")
    lines += ["  esac", "}", "", '_upload_engine "$@"', ""]
    return "\n".join(lines)


# ---- fish ------------------------------------------------------------------------------------


def _fq(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish(cmds: list[Command]) -> str:
    lines = [f"# {PROG} completion for fish", f"complete -c {PROG} -e", f"complete -c {PROG} -f"]
    for c in cmds:
        if c.path:
            parent = c.path[:-1]
            cond = _fish_at(parent, cmds)
            lines.append(f"complete -c {PROG} -n {_fq(cond)} -a {c.path[-1]} -d {_fq(c.help[:60])}")
    for c in cmds:
        cond = _fish_at(c.path, cmds)
        if c.files:
            lines.append(f"complete -c {PROG} -n {_fq(cond)} -F")
        for o in c.options:
            parts = [f"complete -c {PROG} -n {_fq(cond)}"]
            for flag in o.flags:
                parts.append(f"-l {flag[2:]}" if flag.startswith("--") else f"-s {flag[1:]}")
            if o.takes_value:
                parts.append("-r" + (" -F" if o.is_path else ""))
                if o.choices:
                    parts.append(f"-a {_fq(' '.join(o.choices))}")
            parts.append(f"-d {_fq(o.help[:60])}")
            lines.append(" ".join(parts))
    return "\n".join(lines) + "\n"


def _fish_at(path: list[str], cmds: list[Command]) -> str:
    """A fish condition true when the command line is at ``path`` (and not deeper)."""
    if not path:
        return "__fish_use_subcommand"
    deeper = sorted(
        {c.path[len(path)] for c in cmds if len(c.path) > len(path) and c.path[: len(path)] == path}
    )
    cond = " && ".join(f"__fish_seen_subcommand_from {w}" for w in path)
    if deeper:
        cond += f" && not __fish_seen_subcommand_from {' '.join(deeper)}"
    return cond
