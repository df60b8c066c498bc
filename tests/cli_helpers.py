"""What the command-line tests share: run ``scorekit`` in-process and check its one-line errors."""
from scorekit.cli import main


def run_main(capsys, argv):
    """``scorekit ARGV`` in this process: ``(exit code, stdout, stderr)``."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    """Exit status 2 and exactly one line ``scorekit: error: ...`` holding every fragment."""
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("scorekit: error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def main_quietly(argv) -> int:
    """``scorekit ARGV`` in this process with its output thrown away (for fixtures that train a
    run): the exit code."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main([str(a) for a in argv])
