"""`rekd bench` on bad input: exit 2 with one line naming the field."""

from typer.testing import CliRunner

from rekd_ray.bench import BENCHMARK_NAMES
from rekd_ray.cli import app


def _lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


def test_unknown_benchmark_exits_2_naming_the_valid_ones():
    result = CliRunner().invoke(app, ["bench", "warp"])
    assert result.exit_code == 2, result.output
    (line,) = _lines(result.output)
    assert "NAME" in line and "'warp'" in line
    for name in BENCHMARK_NAMES:
        assert name in line


def test_out_that_is_a_directory_exits_2(tmp_path):
    result = CliRunner().invoke(app, ["bench", "data", "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    (line,) = _lines(result.output)
    assert "--out" in line
