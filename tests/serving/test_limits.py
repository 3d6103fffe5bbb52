"""Bounded requests (docs/serving.md, Security): history length, body size and time are capped and
answered with a 4xx fast; the OpenAPI schema says what the app enforces; 405 carries ``Allow``; and a
live uvicorn server closes connections whose headers (or body) never finish."""

from __future__ import annotations

import json
import socket
import time

import pytest
import uvicorn
from fastapi.testclient import TestClient
from serving_helpers import live_server
from support import trained_export

from recsys.export.artifact import load_artifact
from serving import cli
from serving.app import create_app
from serving.recommender import Recommender, RequestError

FAST_S = 1.0  # every rejection below must come back within this


@pytest.fixture(scope="module")
def export_dir():
    return trained_export()[1]


@pytest.fixture(scope="module")
def app(export_dir):
    return create_app(export_dir, body_timeout=0.5)


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def timed_post(client, path, **kwargs):
    start = time.perf_counter()
    r = client.post(path, **kwargs)
    return r, time.perf_counter() - start


# ---------------------------------------------------------------------------- history length
@pytest.mark.parametrize("path", ["/recommend", "/funnel"])
def test_overlong_history_is_rejected_fast(client, path):
    r, seconds = timed_post(client, path, json={"history": ["i1"] * 1001})
    assert r.status_code == 422, r.text
    assert "history" in r.json()["error"] and "1000" in r.json()["error"]
    assert seconds < FAST_S
    assert client.post(path, json={"history": ["i1"] * 1000}).status_code == 200

    # the most ids the 1 MiB body cap lets through (~175k) is refused just as fast
    ids, size = [], 14
    while size + 6 < 1 << 20:
        ids.append("i1")
        size += 6
    body = json.dumps({"history": ids}).encode()
    assert len(body) <= 1 << 20 and len(ids) > 100_000
    r, seconds = timed_post(client, path, content=body, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500 and seconds < FAST_S, (r.status_code, seconds)


def test_max_history_is_a_setting(export_dir):
    with TestClient(create_app(export_dir, max_history=5), raise_server_exceptions=False) as c:
        assert c.post("/recommend", json={"history": ["i1"] * 5}).status_code == 200
        r = c.post("/recommend", json={"history": ["i1"] * 6})
        assert r.status_code == 422 and "max_history=5" in r.json()["error"]
        assert c.get("/info").json()["max_history"] == 5
    with pytest.raises(ValueError, match="max_history"):
        create_app(export_dir, max_history=0)


def test_recommender_caps_history_too(export_dir):
    rec = Recommender(load_artifact(export_dir / "d0004"), max_history=5)
    assert rec.query(["i1"] * 5, k=3).items
    with pytest.raises(RequestError, match="max_history") as err:
        rec.query(["i1"] * 6, k=3)
    assert err.value.status_code == 422
    assert Recommender(load_artifact(export_dir / "d0004")).max_history == 1000


# ---------------------------------------------------------------------------- body size, time
def test_oversized_body_is_413_fast(client):
    big = json.dumps({"history": ["i1"] * 300_000}).encode()
    r, seconds = timed_post(client, "/recommend", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and seconds < FAST_S


# ---------------------------------------------------------------------------- schema = behaviour
def test_openapi_schema_matches_behaviour(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    for name in ("RecommendRequest", "FunnelRequest"):
        props = schemas[name]["properties"]
        assert props["history"]["minItems"] == 1 and props["history"]["maxItems"] == 1000, props["history"]
        assert props["k"]["minimum"] == 1 and props["k"]["maximum"] == 60, props["k"]
    assert schemas["FunnelRequest"]["properties"]["shortlist"]["minimum"] == 1
    for payload, needle in (
        ({"history": []}, "empty"),
        ({"history": ["i1"], "k": 0}, "k must be"),
        ({"history": ["i1"], "k": 61}, "k must be"),
    ):
        r = client.post("/recommend", json=payload)
        assert r.status_code == 422 and needle in r.json()["error"], r.text


def test_405_carries_an_allow_header(client):
    r = client.get("/recommend")
    assert r.status_code == 405 and r.headers.get("allow") == "POST" and "error" in r.json()
    r = client.put("/health")
    assert r.status_code == 405 and "GET" in r.headers.get("allow", "")


# ---------------------------------------------------------------------------- live server
def closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"") -> float | None:
    """Seconds until the server closes ``sock`` (None if it stays open ``seconds``); ``trickle``
    is sent one byte every 0.1 s meanwhile (a slowloris client)."""
    start = time.monotonic()
    sock.settimeout(0.1)
    pending = list(trickle)
    while time.monotonic() - start < seconds:
        try:
            if pending:
                sock.send(bytes([pending.pop(0)]))
            data = sock.recv(4096)
            if data == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except OSError:  # reset / broken pipe: closed too
            return time.monotonic() - start
    return None


def read_response(sock: socket.socket, timeout: float) -> bytes:
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        pass
    return data


def test_live_server_times_out_partial_headers_and_bodies(app):
    from serving.server import ServerLimits

    limits = ServerLimits(header_timeout=0.5, timeout_keep_alive=1, max_header_bytes=8192)
    with live_server(app, limits) as port:
        addr = ("127.0.0.1", port)
        with socket.create_connection(addr) as s:  # partial header, never finished
            s.sendall(b"POST /recommend HTTP/1.1\r\nHost: localhost\r\nContent-")
            seconds = closed_within(s, 5)
            assert seconds is not None and seconds < 2.0, seconds
        with socket.create_connection(addr) as s:  # connects, sends nothing
            seconds = closed_within(s, 5)
            assert seconds is not None and seconds < 2.0, seconds
        with socket.create_connection(addr) as s:  # slowloris: a byte every 0.1 s never resets the clock
            seconds = closed_within(
                s, 5, trickle=b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Pad: " + b"a" * 100
            )
            assert seconds is not None and seconds < 2.0, seconds
        with socket.create_connection(addr) as s:  # a normal request, then a partial second one
            s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert read_response(s, 5).startswith(b"HTTP/1.1 200")
            s.sendall(b"GET /health HTTP/1.1\r\nHos")
            seconds = closed_within(s, 5)
            assert seconds is not None and seconds < 2.0, seconds
        with socket.create_connection(addr) as s:  # headers done, body never finished: 408
            start = time.monotonic()
            s.sendall(
                b"POST /recommend HTTP/1.1\r\nHost: localhost\r\ncontent-type: application/json\r\n"
                b'content-length: 100\r\n\r\n{"hist'
            )
            head = read_response(s, 5)
            assert head.startswith(b"HTTP/1.1 408") and time.monotonic() - start < 2.0, head
        with socket.create_connection(addr) as s:  # headers over max_header_bytes: 4xx at once
            start = time.monotonic()
            s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Big: " + b"a" * 20_000)
            head = read_response(s, 5)
            assert head[9:10] == b"4" and time.monotonic() - start < FAST_S, head


def test_live_server_concurrency_limit(app):
    from serving.server import ServerLimits

    with live_server(app, ServerLimits(header_timeout=5, limit_concurrency=3)) as port:
        addr = ("127.0.0.1", port)
        idle = [socket.create_connection(addr) for _ in range(2)]
        time.sleep(0.2)
        with socket.create_connection(addr) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert read_response(s, 5).startswith(b"HTTP/1.1 503")
        for s in idle:
            s.close()
        time.sleep(0.2)
        with socket.create_connection(addr) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert read_response(s, 5).startswith(b"HTTP/1.1 200")


# ---------------------------------------------------------------------------- CLI
@pytest.fixture
def served(monkeypatch):
    started = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **k: started.append(self.config))
    return started


def test_cli_passes_the_limits_to_uvicorn(export_dir, served):
    cli.main([str(export_dir)])
    config = served[-1]
    assert config.timeout_keep_alive == 5 and config.limit_concurrency == 128
    assert config.h11_max_incomplete_event_size == 16 * 1024 and config.http.header_timeout == 10
    with TestClient(config.app) as c:
        info = c.get("/info").json()
    assert info["max_history"] == 1000 and info["max_body_bytes"] == 1 << 20 and info["body_timeout_s"] == 10

    cli.main(
        [
            str(export_dir),
            "--timeout-keep-alive",
            "2",
            "--header-timeout",
            "3",
            "--body-timeout",
            "4",
            "--limit-concurrency",
            "7",
            "--max-header-bytes",
            "4096",
            "--max-history",
            "50",
            "--max-body-bytes",
            "2048",
        ]
    )
    config = served[-1]
    assert config.timeout_keep_alive == 2 and config.limit_concurrency == 7
    assert config.h11_max_incomplete_event_size == 4096 and config.http.header_timeout == 3
    with TestClient(config.app) as c:
        info = c.get("/info").json()
        assert info["max_history"] == 50 and info["max_body_bytes"] == 2048 and info["body_timeout_s"] == 4
        assert c.post("/recommend", json={"history": ["i1"] * 51}).status_code == 422
    with pytest.raises(SystemExit):
        cli.main([str(export_dir), "--header-timeout", "0"])
