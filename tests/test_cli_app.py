"""cli/app.py: one mapping of errors to exit codes for every command, and argument parsing only in
cli/ (never under core/)."""
import io
import pathlib

import pytest

from drseg import cli
from drseg.cli import models as cli_models
from drseg.cli import segment as cli_segment
from drseg.cli.exit_codes import EXIT_BAD_INPUT, EXIT_CANCELLED
from drseg.cli.progress import ProgressBar
from drseg.core.errors import InputError, RunCancelled

CORE = pathlib.Path(__file__).resolve().parents[1] / "core"


def raising(exc):
    def run(args):
        raise exc
    return run


@pytest.mark.parametrize("exc", [RunCancelled("stop"), KeyboardInterrupt()])
def test_a_cancelled_command_exits_130(monkeypatch, capsys, exc):
    monkeypatch.setattr(cli_segment, "run_segment_command", raising(exc))
    assert cli.main(["segment", "in.tif", "--classes", "water", "--out", "o.gpkg"]) == EXIT_CANCELLED
    assert capsys.readouterr().err == "cancelled\n"


def test_a_cancelled_download_says_how_to_resume(monkeypatch, capsys):
    monkeypatch.setattr(cli_models, "run_models_command", raising(KeyboardInterrupt()))
    assert cli.main(["models", "download", "sam-vit-b"]) == EXIT_CANCELLED
    assert capsys.readouterr().err == "cancelled; run the same command again to resume\n"


def test_bad_input_is_one_line_and_exit_two(monkeypatch, capsys):
    monkeypatch.setattr(cli_segment, "run_segment_command", raising(InputError("no such band 7")))
    assert cli.main(["segment", "in.tif", "--classes", "water", "--out", "o.gpkg"]) == EXIT_BAD_INPUT
    assert capsys.readouterr().err == "error: no such band 7\n"


def test_a_quiet_progress_bar_writes_nothing():
    stream = io.StringIO()
    with ProgressBar(quiet=True, stream=stream) as bar:
        bar(0.5, "half")
        bar.transfer(10, 100)
        bar.write("note")
    assert stream.getvalue() == ""
    with ProgressBar(stream=stream) as bar:
        bar(0.5, "half way")
    assert "half way" in stream.getvalue() and "50" in stream.getvalue()


def test_no_argument_parsing_under_core():
    found = [f"{path.relative_to(CORE)}:{number}"
             for path in sorted(CORE.rglob("*.py"))
             for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if any(word in line for word in ("ArgumentParser", "add_subparsers", "add_argument(",
                                              "argparse.ArgumentTypeError"))]
    assert found == []
