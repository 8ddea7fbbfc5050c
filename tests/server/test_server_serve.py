"""`dlm-guard serve`: start-up checks, --dev, readiness on an expired certificate, and a real
subprocess shut down by SIGTERM while a request is in flight."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import ssl
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from server_support import free_port, wait_for_port

from certs.generate import cert_pem, key_pem, make_ca, make_leaf
from certs.tls import ServingTLS
from webhook import serve
from webhook.cli import _register_serve, settings_from_args
from webhook.policy import CLUSTER_RULES
from webhook.review import decode_review
from webhook.server import CONTEXT, METRICS, READY_CHECKS, not_ready_reasons
from webhook.settings import ServeSettings


def parse(*argv: str) -> ServeSettings:
    """`serve` flags parsed by the real parser (without the other subcommands)."""
    parser = argparse.ArgumentParser()
    _register_serve(parser.add_subparsers())
    return settings_from_args(parser.parse_args(["serve", *argv]))


@pytest.fixture
def no_cluster(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def dev_args(tmp_path: Path, *more: str) -> ServeSettings:
    return parse("--dev", "--dev-dir", str(tmp_path / "dev"), "--port", "9443", *more)


# --- Start-up checks ------------------------------------------------------------------
def test_policy_error_exits_2_naming_the_key(tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("rules:\n  no-such-rule: enforce\nexemptNamespace: [x]\n")
    assert serve.run(dev_args(tmp_path, "--offline", "--config", str(policy))) == 2
    error = capsys.readouterr().err
    assert error.startswith("dlm-guard serve: ") and "no-such-rule" in error
    assert "exemptNamespace" in error


def test_without_any_cluster_config_it_refuses_to_start(
        tmp_path: Path, no_cluster: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert serve.run(dev_args(tmp_path)) == 2
    error = capsys.readouterr().err
    assert "--kubeconfig" in error and "--offline" in error


@pytest.mark.parametrize(("argv", "words"), [
    ((), "--tls-cert and --tls-key are required"),
    (("--tls-cert", "x.crt"), "--tls-cert and --tls-key are required"),
    (("--dev", "--tls-cert", "a", "--tls-key", "b"), "drop --tls-cert"),
    (("--tls-cert", "missing.crt", "--tls-key", "missing.key"), "missing.crt"),
])
def test_certificate_flags(argv: tuple[str, ...], words: str,
                           capsys: pytest.CaptureFixture[str]) -> None:
    assert serve.run(parse("--offline", *argv)) == 2
    assert words in capsys.readouterr().err


def test_dev_makes_certificates_and_prints_how_to_call_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="webhook.serve"):
        app = serve.build(dev_args(tmp_path, "--offline"))
    dev = (tmp_path / "dev").resolve()
    assert {"ca.crt", "tls.crt", "tls.key", "review.json"} <= {p.name for p in dev.iterdir()}
    out = capsys.readouterr().out
    assert f"CA certificate: {dev / 'ca.crt'}" in out
    assert f"curl --cacert {dev / 'ca.crt'} https://127.0.0.1:9443/healthz" in out
    assert (f"-H 'Content-Type: application/json' -d @{dev / 'review.json'} "
            "https://127.0.0.1:9443/validate") in out
    decode_review((dev / "review.json").read_bytes())  # the sample is a valid call
    assert app[CONTEXT].cluster is None
    offline = next(r.getMessage() for r in caplog.records if "offline" in r.getMessage())
    assert all(slug in offline for slug in CLUSTER_RULES)
    assert not_ready_reasons(app[READY_CHECKS]) == []  # offline: ready once serving
    assert b"dlm_guard_certificate_expiry_timestamp_seconds" in app[METRICS].render()


def test_an_expired_serving_certificate_makes_it_not_ready(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    ca = make_ca(now - timedelta(days=30), now + timedelta(days=300))
    leaf = make_leaf(ca, now - timedelta(days=10), now - timedelta(days=1), dns=["localhost"])
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(cert_pem(leaf.cert))
    key.write_bytes(key_pem(leaf.key))
    app = serve.build(parse("--offline", "--tls-cert", str(cert), "--tls-key", str(key)))
    assert isinstance(app[serve.SERVING_TLS], ServingTLS)
    [reason] = not_ready_reasons(app[READY_CHECKS])
    assert reason.startswith("serving certificate expired")


# --- A real process -------------------------------------------------------------------
async def test_sigterm_finishes_the_request_in_flight_then_exits_0(tmp_path: Path) -> None:
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dlm_guard", "serve", "--dev", "--dev-dir", str(tmp_path / "dev"),
        "--offline", "--host", "127.0.0.1", "--port", str(port), "--cert-reload-interval", "0",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await wait_for_port(port, process)
        body = (tmp_path / "dev" / "review.json").read_bytes()
        client = ssl.create_default_context(cafile=str(tmp_path / "dev" / "ca.crt"))
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        writer.write(b"POST /validate HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body) + body[:100])
        await writer.drain()
        await asyncio.sleep(0.2)  # the handler is now waiting for the rest of the body
        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        with pytest.raises(OSError):  # no longer accepting
            await asyncio.open_connection("127.0.0.1", port)
        writer.write(body[100:])
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        assert head.startswith(b"HTTP/1.1 200")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        answer = json.loads(await reader.readexactly(length))
        assert answer["response"]["uid"] == json.loads(body)["request"]["uid"]
        writer.close()
        assert await asyncio.wait_for(process.wait(), timeout=15) == 0
        out, err = await process.communicate()
        assert b"curl --cacert" in out
        assert b"stopped" in err
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
