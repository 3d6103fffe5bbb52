"""HTTP app: valid requests, every 4xx rule, and garbage bodies never answer 500."""

from __future__ import annotations

import json
import random

import pytest
from fastapi.testclient import TestClient
from support import trained_export

from serving.app import create_app


@pytest.fixture(scope="module")
def client():
    export_dir = trained_export()[1]
    with TestClient(create_app(export_dir), raise_server_exceptions=False) as c:
        yield c


def test_health_and_info(client):
    assert client.get("/health").json() == {"status": "ok", "tiers": ["d16", "d4", "d8"]}
    info = client.get("/info").json()
    assert info["catalog_size"] == 60 and info["max_len"] == 10 and info["sizes"] == [4, 8, 16]
    assert info["default_tier"] == "d16"
    assert set(info["tiers"]["d8"]["metrics"]["test"]) == {"ndcg@10", "recall@10"}
    assert info["tiers"]["d8"]["parameters"] > 0


def test_valid_recommend(client):
    history = ["i10", "i11", "i12"]
    r = client.post("/recommend", json={"history": history, "k": 10, "tier": "d8", "exclude_seen": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (
        body["tier"] == "d8"
        and body["size"] == 8
        and body["truncated"] is False
        and body["unknown_items"] == []
    )
    assert len(body["items"]) == len(body["scores"]) == 10
    assert all(i.startswith("i") for i in body["items"]) and not set(body["items"]) & set(history)
    assert body["scores"] == sorted(body["scores"], reverse=True)
    default = client.post("/recommend", json={"history": history}).json()
    assert default["tier"] == "d16" and len(default["items"]) == 10
    seen = client.post("/recommend", json={"history": history, "k": 60, "exclude_seen": False}).json()
    assert set(history) <= set(seen["items"])


def test_unknown_items_reported_and_overlong_truncated(client):
    body = client.post("/recommend", json={"history": ["i1", "zzz", 99, "i2"], "k": 3}).json()
    assert body["unknown_items"] == ["zzz", 99] and len(body["items"]) == 3
    body = client.post("/recommend", json={"history": [f"i{i}" for i in range(1, 60)], "k": 1}).json()
    assert body["truncated"] is True and len(body["items"]) == 1


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        ({"history": []}, 422, "empty"),
        ({"history": ["nope", "never"]}, 422, "none of"),
        ({"history": ["i1"], "k": 0}, 422, "k must be"),
        ({"history": ["i1"], "k": -3}, 422, "k must be"),
        ({"history": ["i1"], "k": 61}, 422, "k must be"),
        ({"history": ["i1"], "k": "10"}, 422, "invalid request"),
        ({"history": ["i1"], "tier": "d999"}, 404, "known tiers"),
        ({"history": "i1"}, 422, "invalid request"),
        ({"history": [1.5]}, 422, "invalid request"),
        ({"history": [None]}, 422, "invalid request"),
        ({"history": ["i1"], "surprise": 1}, 422, "invalid request"),
        ({}, 422, "invalid request"),
        ([1, 2], 422, "invalid request"),
    ],
)
def test_bad_requests_get_clear_4xx(client, payload, status, needle):
    r = client.post("/recommend", json=payload)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]
    if status == 404:
        assert r.json()["known_tiers"] == ["d16", "d4", "d8"]


def test_malformed_json_is_400(client):
    r = client.post("/recommend", content=b'{"history": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]


def test_oversized_body_is_413(client):
    big = json.dumps({"history": ["i1"] * 300_000}).encode()
    assert len(big) > 1 << 20
    r = client.post("/recommend", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "exceeds" in r.json()["error"]

    def chunks():  # no Content-Length: counted while reading
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    r = client.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_funnel_endpoint(client):
    history = ["i20", "i21"]
    full = client.post(
        "/funnel", json={"history": history, "k": 5, "small": "d4", "large": "d16", "shortlist": 60}
    )
    assert full.status_code == 200, full.text
    exact = client.post("/recommend", json={"history": history, "k": 5, "tier": "d16"}).json()
    assert full.json()["items"] == exact["items"]
    assert client.post("/funnel", json={"history": history, "shortlist": 0}).status_code == 422
    assert client.post("/funnel", json={"history": history, "small": "x"}).status_code == 404


def test_garbage_bodies_never_500(client):
    rng = random.Random(0)
    samples = [
        b"",
        b"null",
        b"[]",
        b"{}",
        b"\xff\xfe\x00",
        b'{"history": {"a": 1}}',
        b'{"history": [[1]]}',
        b'{"history": ["i1"], "k": 1e308}',
        b'{"history": ["i1"], "k": 99999999999999999999999}',
        b'{"history": ["i1"], "tier": null}',
        b'{"history": ["i1"], "exclude_seen": "yes"}',
        b'{"history": ["\\ud800"]}',
        b'"history"',
        b"NaN",
        b'{"history": ["i1"], "k": NaN}',
    ]
    samples += [bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 200))) for _ in range(40)]
    samples += [
        json.dumps(
            {
                "history": [rng.choice(["i1", 3, -1, "", "i" * 500]) for _ in range(rng.randint(0, 30))],
                "k": rng.choice([1, 5, 0, 60, 61, -1, 10**20]),
            }
        ).encode()
        for _ in range(40)
    ]
    for body in samples:
        for path in ("/recommend", "/funnel"):
            for ctype in ("application/json", "text/plain"):
                r = client.post(path, content=body, headers={"content-type": ctype})
                assert r.status_code < 500, (body, r.status_code, r.text)
                assert "error" in r.json() or r.status_code == 200
    for method, path in (("GET", "/recommend"), ("PUT", "/health"), ("GET", "/nowhere")):
        r = client.request(method, path)
        assert 400 <= r.status_code < 500 and "error" in r.json()
