"""ipsecctl's help examples and shell completion (docs/operations.md "ipsecctl").

* :data:`EXAMPLES`: one or more example lines per command path; :func:`add_examples`
  puts them under every subcommand's ``--help``.  A command without an entry fails
  tests/unit/controller/test_cli_help.py, so a new command comes with its example.
* ``ipsecctl completion bash|zsh|fish`` prints a completion script made from the
  parser itself (subcommands and options at every level), so it cannot drift from
  the commands.  Install: ``ipsecctl completion bash > /etc/bash_completion.d/ipsecctl``.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Iterator

__all__ = ["EXAMPLES", "add_examples", "command_tree", "completion_script", "register"]

EXAMPLES: dict[str, tuple[str, ...]] = {
    "validate": ("ipsecctl validate cluster.spd --nodes cluster.nodes",),
    "compile": ("ipsecctl compile cluster.spd --node node-a --nodes cluster.nodes -o json",),
    "push": (
        'ipsecctl push cluster.spd -m "open 5432 for db"',
        "ipsecctl push cluster.spd --base-revision 7",
        "ipsecctl push cluster.spd --rollout --canary node-a --batch 25% --wait",
    ),
    "get": ("ipsecctl get --revision 5 -o yaml",),
    "history": ("ipsecctl history --limit 20 -o wide",),
    "diff": ("ipsecctl diff 5 0",),
    "rollback": ("ipsecctl rollback", "ipsecctl rollback 3 -m 'back to the last good one'"),
    "nodes": ("ipsecctl nodes -o wide",),
    "status": ("ipsecctl status node-17", "ipsecctl status --local -o json"),
    "secret": ("ipsecctl secret set db-psk < db-psk.txt",),
    "secret set": (
        "head -c 32 /dev/urandom | ipsecctl secret set mesh-psk",
        "ipsecctl secret set gw-key --hex --from-file gw-key.hex",
    ),
    "secret list": ("ipsecctl secret list -o json",),
    "secret delete": ("ipsecctl secret delete old-psk",),
    "convert": ("ipsecctl convert /etc/swanctl/swanctl.conf -o vpn.spd --secrets-out vpn.secrets",),
    "token": ("TOKEN=$(ipsecctl token create --ttl 1h --uses 1)",),
    "token create": (
        "ipsecctl token create --ttl 1h --uses 1 > node-17.token",
        "ipsecctl token create --node node-17 --ttl 30m   # re-join an existing node",
    ),
    "token list": ("ipsecctl token list -o json",),
    "token delete": ("ipsecctl token delete 4f2a9c",),
    "node": ("ipsecctl node remove node-17",),
    "node remove": ("ipsecctl node remove node-17",),
    "check-rollout": ("ipsecctl check-rollout old.spd new.spd --nodes cluster.nodes",),
    "rollout": ("ipsecctl push new.spd --rollout --canary 2 --batch 10% --wait",),
    "rollout status": ("ipsecctl rollout status", "ipsecctl rollout status --wait -o json"),
    "rollout pause": ("ipsecctl rollout pause",),
    "rollout resume": ("ipsecctl rollout resume",),
    "rollout abort": ("ipsecctl rollout abort   # the moved nodes go back",),
    "rollout rollback": ("ipsecctl rollout rollback --wait",),
    "completion": (
        "ipsecctl completion bash > /etc/bash_completion.d/ipsecctl",
        'source <(ipsecctl completion zsh)   # in ~/.zshrc, after "compinit"',
    ),
}


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def command_tree(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (sub)command under ``parser``: its path and its parser."""
    for name, sub in _subcommands(parser).items():
        yield (*path, name), sub
        yield from command_tree(sub, (*path, name))


def add_examples(parser: argparse.ArgumentParser) -> None:
    """Append the examples of :data:`EXAMPLES` to every subcommand's help."""
    for path, sub in command_tree(parser):
        lines = EXAMPLES.get(" ".join(path))
        if not lines:
            continue
        text = (
            "example"
            + ("s" if len(lines) > 1 else "")
            + ":\n"
            + "\n".join(f"  {line}" for line in lines)
        )
        sub.epilog = f"{sub.epilog}\n\n{text}" if sub.epilog else text
        sub.formatter_class = argparse.RawDescriptionHelpFormatter


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(
        opt for action in parser._actions for opt in action.option_strings if opt.startswith("-")
    )


def _table(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    """Command path (space separated, "" for the top) -> the words that may follow."""
    table = {"": [*_subcommands(parser), *_options(parser)]}
    for path, sub in command_tree(parser):
        table[" ".join(path)] = [*_subcommands(sub), *_options(sub)]
    return table


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    table = _table(parser)
    if shell == "bash":
        empty = '""'
        cases = "\n".join(
            f"        {shlex.quote(path) if path else empty}) words={shlex.quote(' '.join(ws))} ;;"
            for path, ws in sorted(table.items())
        )
        return f"""# ipsecctl completion for bash (generated by `ipsecctl completion bash`)
_ipsecctl() {{
    local cur path words i w
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    path=""
    for ((i = 1; i < COMP_CWORD; i++)); do
        w="${{COMP_WORDS[i]}}"
        [[ $w == -* ]] && continue
        case "${{path:+$path }}$w" in
{_known(table)}
        esac
    done
    case "$path" in
{cases}
        *) words="" ;;
    esac
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
    [[ ${{#COMPREPLY[@]}} -eq 0 ]] && COMPREPLY=($(compgen -f -- "$cur"))
}}
complete -F _ipsecctl ipsecctl
"""
    if shell == "zsh":
        return (
            "# ipsecctl completion for zsh (generated by `ipsecctl completion zsh`)\n"
            "autoload -U +X bashcompinit && bashcompinit\n"
            + completion_script(parser, "bash").split("\n", 1)[1]
        )
    if shell == "fish":
        lines = ["# ipsecctl completion for fish (generated by `ipsecctl completion fish`)"]
        for path, words in sorted(table.items()):
            depth = len(path.split()) if path else 0
            cond = (
                "__fish_use_subcommand"
                if depth == 0
                else f"__fish_seen_subcommand_from {shlex.quote(path.split()[-1])}"
            )
            for w in words:
                if w.startswith("--"):
                    lines.append(f"complete -c ipsecctl -n {shlex.quote(cond)} -l {w[2:]}")
                elif w.startswith("-"):
                    lines.append(f"complete -c ipsecctl -n {shlex.quote(cond)} -s {w[1:]}")
                else:
                    lines.append(f"complete -c ipsecctl -n {shlex.quote(cond)} -f -a {w}")
        return "\n".join(lines) + "\n"
    raise ValueError(f"no completion for shell {shell!r}: bash, zsh or fish")


def _known(table: dict[str, list[str]]) -> str:
    """Bash case arms that extend ``path`` with a word only when it names a command."""
    arms = [f'            {shlex.quote(path)}) path="{path}" ;;' for path in sorted(table) if path]
    return "\n".join(arms)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh or fish)",
        description="The script completes every subcommand and option of this ipsecctl.",
    )
    p.add_argument("shell", choices=("bash", "zsh", "fish"))

    def run(args: argparse.Namespace) -> int:
        from controller.cli import build_parser

        print(completion_script(build_parser(), args.shell), end="")
        return 0

    p.set_defaults(func=run)
