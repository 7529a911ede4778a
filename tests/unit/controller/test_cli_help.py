"""ipsecctl's help examples, completion, output formats and colour
(controller/cli_help.py, controller/cliout.py; docs/operations.md "ipsecctl")."""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import pytest
import yaml

from controller.cli import build_parser
from controller.cli_help import EXAMPLES, command_tree, completion_script
from controller.cliout import color_enabled, emit, paint, to_yaml


def test_every_command_has_an_example_in_its_help() -> None:
    parser = build_parser()
    paths = {" ".join(path): sub for path, sub in command_tree(parser)}
    missing = sorted(set(paths) - set(EXAMPLES))
    assert not missing, f"add an example to controller/cli_help.py EXAMPLES for {missing}"
    assert not set(EXAMPLES) - set(paths), "an example names no command"
    for path, sub in paths.items():
        text = sub.format_help()
        assert "example" in text and EXAMPLES[path][0] in text, path


READS = ("get", "history", "nodes", "status", "secret list", "token list")


def test_read_commands_offer_wide_json_and_yaml() -> None:
    paths = {" ".join(p): sub for p, sub in command_tree(build_parser())}
    for path in READS:
        out = next(a for a in paths[path]._actions if "--output" in a.option_strings)
        assert {"table", "wide", "json", "yaml"} <= set(out.choices or ()), path
    for path in ("compile", "check-rollout"):
        out = next(a for a in paths[path]._actions if "--output" in a.option_strings)
        assert {"json", "yaml"} <= set(out.choices or ()), path


@pytest.mark.parametrize(
    "obj",
    [
        {"a": 1, "b": [1, 2, {"c": "yes", "d": None}], "e": {}, "f": [], "g": True},
        [{"name": "node-a", "labels": {"role": "web"}, "addresses": ["192.0.2.1", "fd00::1"]}],
        {"weird": ["1", "-", "a: b", "#x", "", "on", "x\ny", "ümlaut", "/path/to", "a b"]},
        {"nested": [[1, 2], [], [{"k": [{"z": 0.5}]}]]},
    ],
)
def test_yaml_output_reads_back_as_the_same_data(obj: object) -> None:
    assert yaml.safe_load(to_yaml(obj)) == obj


def test_emit_follows_o() -> None:
    import argparse

    out = io.StringIO()
    emit(argparse.Namespace(output="yaml"), {"k": ["v"]}, out)
    assert out.getvalue() == "k:\n  - v\n"
    out = io.StringIO()
    emit(argparse.Namespace(output="json"), {"k": ["v"]}, out)
    assert out.getvalue().startswith("{\n")


def test_colour_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert paint("x", "31", io.StringIO()) == "x"  # a pipe or file: plain
    assert paint("x", "31", Tty()) == "\033[31mx\033[0m"
    monkeypatch.setenv("NO_COLOR", "1")
    assert not color_enabled(Tty())
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert not color_enabled(Tty())


def _complete(script: Path, *words: str) -> list[str]:
    """What bash completes after ``words`` (the last one being typed)."""
    quoted = " ".join(f"'{w}'" for w in words)
    cmd = (
        f"source {script}; COMP_WORDS=(ipsecctl {quoted}); COMP_CWORD={len(words)}; "
        "_ipsecctl; printf '%s\\n' \"${COMPREPLY[@]}\""
    )
    done = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, check=True)
    return done.stdout.split()


def test_bash_completion_completes_commands_and_options(tmp_path: Path) -> None:
    script = tmp_path / "ipsecctl.bash"
    script.write_text(completion_script(build_parser(), "bash"))
    assert "secret" in _complete(script, "sec")
    assert _complete(script, "secret", "s") == ["set"]
    assert "--from-file" in _complete(script, "secret", "set", "--fr")
    assert {"--show-secrets", "--revision"} <= set(_complete(script, "get", "--"))
    assert "--output" in _complete(script, "--insecure", "nodes", "--o")  # after a flag


def test_zsh_and_fish_scripts_are_made() -> None:
    zsh = completion_script(build_parser(), "zsh")
    assert "bashcompinit" in zsh and "complete -F _ipsecctl ipsecctl" in zsh
    fish = completion_script(build_parser(), "fish")
    assert "complete -c ipsecctl -n __fish_use_subcommand -f -a push" in fish
    with pytest.raises(ValueError, match="bash, zsh or fish"):
        completion_script(build_parser(), "tcsh")
