"""Hostile input (issue #16, findings 1 and 2) and the bounds of docs/limits.md.

Work is bounded by counting (words produced by macros, diagnostics kept, characters
rendered), never by timing."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.cli import main as ipsecctl
from ipsecd.spd import SpdError, load_file, load_nodes_file, load_text
from ipsecd.spd import loader as spd_loader
from ipsecd.spd import nodes as spd_nodes
from ipsecd.spd.errors import Diagnostic, Severity, Sink, clip
from ipsecd.spd.lexer import tokenize
from ipsecd.spd.limits import (
    LINE_WINDOW,
    MACRO_CAP,
    MACRO_FLOOR,
    MAX_ERRORS,
    MAX_MESSAGE,
    MAX_WARNINGS,
    macro_budget,
)
from ipsecd.spd.parser import parse


def _bomb(levels: int) -> str:
    """The report's macro bomb: m0 = a b; m1 = $m0 $m0; ... (m_n is 2**(n+1) words)."""
    lines = ["m0 = a b;"] + [f"m{i} = $m{i - 1} $m{i - 1};" for i in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


# -- finding 1: macro bomb ------------------------------------------------------------


def test_the_reported_bomb_is_337_bytes() -> None:
    assert len(_bomb(21).rstrip("\n").encode()) == 337


@pytest.mark.parametrize("levels", [21, 22, 200])
def test_unused_macros_cost_nothing(levels: int) -> None:
    sink = Sink()
    b = parse(_bomb(levels), "bomb.spd", sink)
    assert not sink.has_errors and b.macro_words == 0


@pytest.mark.parametrize("levels", [21, 22, 200])
def test_using_the_bomb_is_refused_at_the_use(levels: int) -> None:
    text = _bomb(levels) + f"bypass udp port $m{levels};\n"
    sink = Sink()
    b = parse(text, "bomb.spd", sink)
    [err] = sink.errors()
    assert (err.line, err.col) == (levels + 2, 17)
    size = 2 ** (levels + 1)
    words = str(size) if size <= MACRO_CAP else f"more than {MACRO_CAP}"
    assert err.message == (
        f"macro '$m{levels}' expands to {words} words, more than the {MACRO_FLOOR} left of "
        f"this file's macro expansion budget ({MACRO_FLOOR} words)"
    )
    assert "write the list out" in err.hint
    assert b.macro_words == 0  # nothing was expanded
    with pytest.raises(SpdError) as info:
        load_text(text, "bomb.spd")
    rendered = info.value.render()
    assert rendered.startswith(f"bomb.spd:{levels + 2}:17: error: macro '$m{levels}' expands")
    assert "\n  bypass udp port $m" in rendered and "\nhint: " in rendered


def test_budget_is_shared_by_all_uses_and_counted() -> None:
    # m14 is 32,768 words: two uses fit the 65,536-word floor, the third does not
    text = _bomb(14) + "".join(f"x{i} = $m14;\n" for i in range(3))
    text += "".join(f"bypass $x{i};\n" for i in range(3))
    sink = Sink()
    b = parse(text, "f.spd", sink)
    errors = [d for d in sink.errors() if "macro expansion budget" in d.message]
    assert [d.line for d in errors] == [21]
    assert b.macro_words == 2 * 32768 == macro_budget(200)


def test_budget_grows_with_the_file_up_to_the_cap() -> None:
    assert macro_budget(10) == MACRO_FLOOR
    assert macro_budget(10_000) == 160_000
    assert macro_budget(10**8) == MACRO_CAP


def test_long_macro_chains_need_no_recursion() -> None:
    # a chain longer than Python's recursion limit, used many times
    n = 5000
    text = "c0 = a b;\n" + "".join(f"c{i} = $c{i - 1} x;\n" for i in range(1, n))
    text += "".join(f"y{i} = $c{n - 1};\n" for i in range(3))
    sink = Sink()
    b = parse(text + "z = 1 $y0;\n", "f.spd", sink)
    assert not sink.has_errors and b.macro_words == 0
    sink = Sink()
    b = parse(text + "bypass $y1;\n" * 3, "f.spd", sink)
    assert b.macro_words == 3 * (n + 1)
    assert all(d.message.startswith("expected a rule clause") for d in sink.errors())


def test_macros_still_expand_as_before() -> None:
    p = load_text(
        "net = 10.1.0.0; dns = 53; two = $net 10.2.0.0/16; one = $two;\n"
        "ports = tcp port $dns; sel = $net/16[53];\n"
        "spdadd $sel 10.9.0.0/16 udp -P out none;\n"
        "bypass $ports;\n"
    )
    assert str(p.spd[0].selector.src) == "10.1.0.0/16"
    assert p.rules[0].proto == 6 and p.rules[0].either_port == 53
    with pytest.raises(SpdError, match=r"macro '\$two' is a list and cannot be joined"):
        load_text("two = a b;\nspdadd $two/24 10.0.0.1 any -P out none;")
    with pytest.raises(SpdError, match=r"undefined macro '\$nope'"):
        load_text("x = $nope;\nbypass $x;")


# -- finding 2: an error-dense line ---------------------------------------------------

DENSE = "x;" * 8192 + "\n"  # 16 KB, 8,192 errors, each once repeating the whole line


def test_error_dense_line_is_capped_and_abridged() -> None:
    with pytest.raises(SpdError) as info:
        load_text(DENSE, "dense.spd")
    exc = info.value
    assert exc.total_errors == 8192
    assert len(exc.diagnostics) == MAX_ERRORS + 1
    last = exc.diagnostics[-1]
    assert (last.line, last.col) == (1, 2 * MAX_ERRORS + 1)
    assert last.message == (
        f"{8192 - MAX_ERRORS} more errors from here on not shown "
        f"(at most {MAX_ERRORS} errors are listed per file)"
    )
    text = exc.render()
    assert text.endswith("\n8192 errors")
    # every diagnostic shows a window of the line, never the whole line
    lines = text.split("\n")
    assert max(len(line) for line in lines) <= LINE_WINDOW + 8
    assert len(text) < (MAX_ERRORS + 1) * (3 * LINE_WINDOW + MAX_MESSAGE)


def test_window_keeps_the_caret_under_the_column() -> None:
    line = "x;" * 500 + "bogus;" + "y;" * 500
    d = Diagnostic("f", 1, 1001, Severity.ERROR, "m", "", line)
    _, shown, caret, _hint = (d.render() + "\n").split("\n", 3)
    at = caret.index("^")
    assert shown[at:].startswith("bogus;") and shown.startswith("  ...")
    assert shown.endswith("...") and len(shown) == 2 + 3 + LINE_WINDOW + 3


def test_window_masks_keys_before_cutting() -> None:
    key = "0x" + "ab" * 200
    line = f"add 192.0.2.1 192.0.2.2 esp 0x1000 -E aes-cbc {key} bad;"
    d = Diagnostic("f", 1, line.index("bad") + 1, Severity.ERROR, "m", "", line)
    assert "ab" not in d.render().split("\n")[1]


def test_cli_output_for_the_dense_line_is_bounded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "dense.spd"
    f.write_text(DENSE)
    assert ipsecctl(["validate", str(f)]) == 1
    err = capsys.readouterr().err
    assert err.count(": error: ") == MAX_ERRORS + 1
    assert len(err) < 100_000  # was 203 MB


def test_long_words_are_clipped_in_messages() -> None:
    word = "w" * 100_000
    with pytest.raises(SpdError) as info:
        load_text(word + ";\n")
    [d] = info.value.diagnostics
    assert len(d.message) <= MAX_MESSAGE and d.message.startswith("unknown statement 'www")
    assert clip("abc") == "abc" and len(clip("z" * 1000)) == MAX_MESSAGE


def test_warnings_are_capped_too() -> None:
    text = "".join(f"proposal esp p{i} aes256-sha1;\n" for i in range(MAX_WARNINGS + 50))
    text += "".join(f"connection c{i} {{ between all and all; esp p{i}; }}\n"
                    for i in range(MAX_WARNINGS + 50))  # fmt: skip
    warnings = load_text(text, "f.spd").warnings
    assert len(warnings) == MAX_WARNINGS + 1
    assert warnings[-1].message.startswith("50 more warnings from here on not shown")


# -- file size and tokens -------------------------------------------------------------


def test_token_limit_stops_reading_with_a_located_error() -> None:
    sink = Sink()
    tokens, _ = tokenize("a b;\nc d e f;\n# note\ng;\n", "f.spd", sink, max_tokens=5)
    assert [t.text for t in tokens] == ["a", "b", ";", "c", "d", ""]
    [err] = sink.errors()
    assert (err.line, err.col) == (2, 5)
    assert err.message.startswith("the file has more than 5 words, strings and punctuation")
    sink = Sink()
    tokens, _ = tokenize("a b;\n# only a comment\n", "f.spd", sink, max_tokens=3)
    assert not sink.has_errors and len(tokens) == 4


def test_file_over_the_byte_limit_is_refused_without_reading_it_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(spd_loader, "MAX_FILE_BYTES", 64)
    monkeypatch.setattr(spd_nodes, "MAX_FILE_BYTES", 64)
    f = tmp_path / "big.spd"
    f.write_text("bypass udp port 53;\n" * 10)  # 200 bytes
    with pytest.raises(SpdError) as info:
        load_file(f)
    [d] = info.value.diagnostics
    assert (d.line, d.col) == (4, 5)  # byte 64 is the 5th character of line 4
    assert d.message == "the SPD file is larger than 64 bytes; it is not read"
    assert d.render().split("\n")[1] == "  bypass udp port 53;"
    with pytest.raises(SpdError, match="larger than 64 bytes"):
        load_text(f.read_text(), "big.spd")
    n = tmp_path / "nodes"
    n.write_text("node-a 192.0.2.1\n" * 10)
    with pytest.raises(SpdError, match="the nodes file is larger than 64 bytes"):
        load_nodes_file(n)


# -- overlap check work -----------------------------------------------------------------


def _port_rules(n: int) -> str:
    """n rules that all overlap each other: 'port N' is source or destination port N."""
    return "".join(
        f"{'bypass' if i % 2 else 'discard'} tcp port {1000 + i} dir out;\n" for i in range(n)
    )


def test_overlap_check_stops_after_its_budget_with_a_warning() -> None:
    from ipsecd.spd.overlap import find_conflicts, report_conflicts
    from ipsecd.spd.validate import _overlap_items

    sink = Sink()
    items = _overlap_items(parse(_port_rules(200), "f.spd", sink))
    assert len(items) == 800  # two ports, two families
    full = find_conflicts(items)
    pairs = sum(1 for _ in full)
    assert full.stopped_at is None and pairs > 10_000  # quadratic in the rules
    scan = find_conflicts(items, budget=5_000)
    assert sum(1 for _ in scan) < pairs
    assert scan.stopped_at is not None and 5_000 <= scan.work < 5_000 + len(items)
    sink = Sink(max_warnings=1000)
    report_conflicts(items, sink, budget=5_000)
    last = sink.warnings()[-1]
    assert last.message.startswith("the check for overlapping selectors stopped here, after ")
    assert last.line == scan.stopped_at.loc.line


def test_rules_with_one_action_cost_no_overlap_work() -> None:
    from ipsecd.spd.overlap import find_conflicts
    from ipsecd.spd.validate import _overlap_items

    text = "".join(f"bypass tcp port {1000 + i} dir out;\n" for i in range(500))
    scan = find_conflicts(_overlap_items(parse(text, "f.spd", Sink())))
    assert list(scan) == [] and scan.work == 0


def test_macros_in_an_on_block_are_expanded_and_reported_once() -> None:
    text = _bomb(21) + "nodes g name a;\non g { bypass udp port $m21; bypass $nope; }\n"
    with pytest.raises(SpdError) as info:
        load_text(text, "f.spd")
    got = [(d.line, d.message.split(" expands")[0]) for d in info.value.diagnostics]
    assert got == [(24, "macro '$m21'"), (24, "undefined macro '$nope'")]
