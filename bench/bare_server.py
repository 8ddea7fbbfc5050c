"""The ceiling: a bare aiohttp TLS server that answers every review with a fixed "allowed".

Same stack as `dlm-guard serve` (aiohttp's web.run_app, one process, TLS, keep-alive, no access
log), none of its work: it reads the body and returns constant bytes. What dlm-guard adds on top
(decoding, checks, rules, mutations, metrics, logging) is the difference to this server.

    python -m bench.bare_server --port 8443 --tls-cert tls.crt --tls-key tls.key
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
from collections.abc import Sequence

from aiohttp import web

ANSWER = json.dumps({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                     "response": {"uid": "", "allowed": True}}).encode()


async def _answer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=ANSWER, content_type="application/json")


async def _ok(_request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def create_app() -> web.Application:
    app = web.Application(client_max_size=7 * 1024 * 1024)
    app.router.add_post("/mutate", _answer)
    app.router.add_post("/validate", _answer)
    app.router.add_get("/healthz", _ok)
    return app


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare_server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls-cert", required=True)
    parser.add_argument("--tls-key", required=True)
    args = parser.parse_args(argv)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.tls_cert, args.tls_key)
    web.run_app(create_app(), host=args.host, port=args.port, ssl_context=context,
                access_log=None, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
