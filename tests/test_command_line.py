"""Every command's argument errors are one line naming the nearest flag, and its --help shows
what it says (no argparse escapes left)."""

from __future__ import annotations

import importlib

import pytest

COMMANDS = ("train", "evaluate", "recommend", "info", "tune", "blend", "export")


def parser_of(name: str):
    module = importlib.import_module(f"deeprec.{name}")
    if hasattr(module, "build_parser"):
        return module.build_parser()
    with pytest.raises(SystemExit):  # info builds its parser inside main: its --help
        module.main(["--help"])
    return None


@pytest.mark.parametrize("name", COMMANDS)
def test_help_has_no_escaped_percent_signs(name, capsys):
    parser = parser_of(name)
    text = parser.format_help() if parser is not None else capsys.readouterr().out
    assert "%%" not in text and "%(" not in text, text


@pytest.mark.parametrize("name", [c for c in COMMANDS if c != "info"])
def test_a_mistyped_flag_is_one_line_naming_the_nearest(name, capsys):
    parser = parser_of(name)
    flag = next(f for a in parser._actions for f in a.option_strings if f.startswith("--")
                and f not in ("--help",) and len(f) > 5)  # fmt: skip
    typo = flag[:3] + flag[4] + flag[3] + flag[5:]  # two letters swapped
    with pytest.raises(SystemExit) as stop:
        parser.parse_args([typo])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"{parser.prog}: error: unrecognized arguments: {typo}"), err
    assert f"did you mean {flag}?" in err[0], err


def test_a_clipped_list_shows_the_scores_that_order_it():
    """Predicted ratings above the scale print as its top (5.00) with the score that orders
    the list beside them; ratings inside the scale print alone."""
    import numpy as np

    from deeprec.inference.ranking import list_lines

    class Scorer:
        def __init__(self) -> None:
            self.scale = (0.5, 5.0)
            self.item_ids = np.array([10, 20, 30])
            self.titles = {10: "A", 20: "B"}

    scores = np.array([5.83, 4.2, 6.1])
    lines = list_lines(Scorer(), np.array([2, 0, 1]), scores)
    assert lines == [
        "  1. 5.00 (6.10)  item 30  [30]",
        "  2. 5.00 (5.83)  A  [10]",
        "  3. 4.20  B  [20]",
    ]
