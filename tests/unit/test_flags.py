"""Numeric flags: out-of-range values are refused at parse time, naming the flag."""

from __future__ import annotations

import pytest

from dlm_guard.cli import build_parser

SERVE = ["serve", "--offline", "--dev"]


@pytest.mark.parametrize(("argv", "words"), [
    ([*SERVE, "--port", "70000"], "argument --port: must be a port number 1-65535, got 70000"),
    ([*SERVE, "--port", "0"], "argument --port: must be a port number 1-65535, got 0"),
    ([*SERVE, "--port", "-1"], "argument --port: must be a port number"),
    ([*SERVE, "--port", "https"], "argument --port: must be an integer, got https"),
    ([*SERVE, "--cert-reload-interval", "1e-9"],
     "argument --cert-reload-interval: must be 1-86400 seconds or 0, got 1e-9"),
    ([*SERVE, "--cert-reload-interval", "-1"], "argument --cert-reload-interval: must be"),
    ([*SERVE, "--cert-reload-interval", "nan"], "argument --cert-reload-interval: must be"),
    ([*SERVE, "--cert-reload-interval", "inf"], "argument --cert-reload-interval: must be"),
    ([*SERVE, "--max-connections", "0"], "argument --max-connections: must be an integer"),
    ([*SERVE, "--idle-timeout", "0"], "argument --idle-timeout: must be 0.1-300 seconds"),
    ([*SERVE, "--body-timeout", "nan"], "argument --body-timeout: must be 0.1-300 seconds"),
    (["certs", "generate", "--out", "x", "--days", "0"], "argument --days: must be an integer"),
    (["certs", "generate", "--out", "x", "--ca-days", "-5"], "argument --ca-days: must be"),
])
def test_out_of_range_numbers_exit_2_naming_the_flag(
        argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(argv)
    assert exited.value.code == 2
    assert words in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "attribute", "value"), [
    ([*SERVE, "--port", "1"], "port", 1),
    ([*SERVE, "--port", "65535"], "port", 65535),
    ([*SERVE, "--cert-reload-interval", "0"], "cert_reload_interval", 0.0),
    ([*SERVE, "--cert-reload-interval", "1"], "cert_reload_interval", 1.0),
    ([*SERVE, "--idle-timeout", "2.5"], "idle_timeout", 2.5),
])
def test_values_in_range_are_kept(argv: list[str], attribute: str, value: float) -> None:
    assert getattr(build_parser().parse_args(argv), attribute) == value
