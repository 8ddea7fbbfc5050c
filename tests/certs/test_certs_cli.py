"""`dlm-guard certs generate | inspect | ca-bundle`, and the inspect report with a fixed clock."""

from __future__ import annotations

import argparse
import base64
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from certs import cli
from certs.bundle import fingerprint
from certs.generate import Issued, cert_pem, key_pem, load_issued, make_ca, make_leaf, sans_of
from certs.report import inspect_pem

DAY = timedelta(days=1)
# The CLI reads the wall clock, so certificates are built around it (to the second, as stored).
WALL = datetime.now(UTC).replace(microsecond=0)


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dlm-guard")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.func(args))


@pytest.fixture(scope="module")
def wall_ca() -> Issued:
    return make_ca(WALL - DAY, WALL + 100 * DAY, common_name="cli-ca")


def write(path: Path, *chunks: bytes) -> Path:
    path.write_bytes(b"".join(chunks))
    return path


# --- generate ---------------------------------------------------------------------------
def test_generate_with_service_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "pki"
    argv = ["certs", "generate", "--out", str(out), "--service", "dlm-guard",
            "--namespace", "dlm", "--dns", "localhost", "--ip", "127.0.0.1", "--days", "30"]
    assert run(argv) == 0
    leaf = load_issued(out / "tls.crt", out / "tls.key").cert
    assert sans_of(leaf) == (
        frozenset({"localhost", "dlm-guard.dlm.svc", "dlm-guard.dlm.svc.cluster.local"}),
        frozenset({"127.0.0.1"}))
    assert "CA created" in capsys.readouterr().out
    before = (out / "tls.crt").read_bytes()
    assert run(argv) == 0
    assert (out / "tls.crt").read_bytes() == before
    assert "kept" in capsys.readouterr().out


@pytest.mark.parametrize(("extra", "message"), [
    (["--service", "x"], "--service and --namespace go together"),
    ([], "at least one DNS name"),
    (["--dns", "a b"], "not a valid DNS name"),
])
def test_generate_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               extra: list[str], message: str) -> None:
    assert run(["certs", "generate", "--out", str(tmp_path / "o"), *extra]) == cli.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_generate_refuses_a_foreign_ca_key(tmp_path: Path, wall_ca: Issued,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["certs", "generate", "--out", str(tmp_path), "--dns", "a.example"]) == 0
    write(tmp_path / "ca.key", key_pem(wall_ca.key))
    assert run(["certs", "generate", "--out", str(tmp_path), "--dns", "a.example"]) == 1
    assert "--force" in capsys.readouterr().err


# --- inspect ----------------------------------------------------------------------------
def test_inspect_valid_file(tmp_path: Path, wall_ca: Issued,
                            capsys: pytest.CaptureFixture[str]) -> None:
    leaf = make_leaf(wall_ca, WALL - DAY, WALL + 10 * DAY, dns=["web.example"], ips=["::1"])
    path = write(tmp_path / "chain.pem", cert_pem(leaf.cert), cert_pem(wall_ca.cert))
    assert run(["certs", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "CN=web.example" in out and "DNS:web.example, IP:::1" in out
    assert fingerprint(leaf.cert) in out and fingerprint(wall_ca.cert) in out
    assert out.count("status:     valid") == 2


@pytest.mark.parametrize(("start", "end", "word"), [
    (-10, -1, "EXPIRED"), (1, 10, "NOT YET VALID")])
def test_inspect_fails_on_an_invalid_certificate(
        tmp_path: Path, wall_ca: Issued, capsys: pytest.CaptureFixture[str],
        start: int, end: int, word: str) -> None:
    bad = make_leaf(wall_ca, WALL + start * DAY, WALL + end * DAY, dns=["x.example"])
    path = write(tmp_path / "c.pem", cert_pem(wall_ca.cert), cert_pem(bad.cert))
    assert run(["certs", "inspect", str(path)]) == cli.EXIT_INVALID
    assert word in capsys.readouterr().out


def test_inspect_without_certificates_or_file(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["certs", "inspect", str(write(tmp_path / "e.pem", b"hello\n"))]) == 1
    assert "no certificate found" in capsys.readouterr().err
    assert run(["certs", "inspect", str(tmp_path / "absent.pem")]) == cli.EXIT_USAGE


def test_inspect_stdin(wall_ca: Issued, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(cert_pem(wall_ca.cert).decode()))
    assert run(["certs", "inspect", "-"]) == 0
    assert "CN=cli-ca" in capsys.readouterr().out


def test_report_with_fixed_clock(wall_ca: Issued) -> None:
    text = cert_pem(wall_ca.cert).decode() + "junk\n"
    report = inspect_pem(text, WALL + 200 * DAY)
    assert report.invalid == 1 and not report.ok and report.certificates == 1
    assert "  status:     EXPIRED (100d ago)" in report.lines
    assert report.problems and "outside any PEM block" in report.problems[0]
    assert inspect_pem(text, WALL).ok


# --- ca-bundle --------------------------------------------------------------------------
def test_ca_bundle_from_dir_and_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["certs", "generate", "--out", str(tmp_path), "--dns", "a.example"]) == 0
    capsys.readouterr()
    assert run(["certs", "ca-bundle", "--dir", str(tmp_path)]) == 0
    encoded = capsys.readouterr().out.strip()
    assert base64.b64decode(encoded) == (tmp_path / "ca.crt").read_bytes()
    assert run(["certs", "ca-bundle", "--ca", str(tmp_path / "ca.crt")]) == 0
    assert capsys.readouterr().out.strip() == encoded


def test_ca_bundle_refuses_a_private_key(tmp_path: Path, wall_ca: Issued,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "ca.crt", cert_pem(wall_ca.cert), key_pem(wall_ca.key))
    assert run(["certs", "ca-bundle", "--ca", str(path)]) == cli.EXIT_INVALID
    captured = capsys.readouterr()
    assert captured.out == "" and "PRIVATE KEY block" in captured.err
    secret = key_pem(wall_ca.key).decode().splitlines()[1]
    assert secret not in captured.err


def test_ca_bundle_warns_on_a_non_ca(tmp_path: Path, wall_ca: Issued,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    leaf = make_leaf(wall_ca, WALL - DAY, WALL + DAY, dns=["x.example"])
    assert run(["certs", "ca-bundle", "--ca", str(write(tmp_path / "l.pem",
                                                         cert_pem(leaf.cert)))]) == 0
    assert "not a currently valid CA" in capsys.readouterr().err


def test_ca_bundle_missing_file(tmp_path: Path) -> None:
    assert run(["certs", "ca-bundle", "--dir", str(tmp_path)]) == cli.EXIT_USAGE
