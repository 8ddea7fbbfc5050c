"""Fixtures for the server tests: real certificates in tmp, a real TLS server on 127.0.0.1."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from server_support import listening, offline_context

from certs.generate import PairPaths, generate_pair
from webhook.server import create_app


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PairPaths:
    """A CA and a 127.0.0.1/localhost serving certificate, made once per run."""
    return generate_pair(tmp_path_factory.mktemp("pki"), dns=("localhost",),
                         ips=("127.0.0.1",))


@pytest.fixture(scope="session")
def client_ssl(pki: PairPaths) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki.ca_cert))


@asynccontextmanager
async def running(app: web.Application, pki: PairPaths) -> AsyncIterator[str]:
    """Serve `app` over real TLS on 127.0.0.1, on a free port; yields the base URL."""
    async with listening(app, pki) as listener:
        yield f"https://127.0.0.1:{listener.port}"


@pytest.fixture
def serve(pki: PairPaths) -> Callable[[web.Application], Any]:
    return lambda app: running(app, pki)


@pytest.fixture
async def session(client_ssl: ssl.SSLContext) -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(ssl=client_ssl, limit=0)
    async with aiohttp.ClientSession(connector=connector) as client:
        yield client


@pytest.fixture
async def base_url(pki: PairPaths) -> AsyncIterator[str]:
    """A real server with the real engine, offline, default policy."""
    async with running(create_app(offline_context()), pki) as url:
        yield url
