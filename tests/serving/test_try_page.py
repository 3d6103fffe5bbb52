"""The try-it page (docs/serving.md, Try it in a browser): ``GET /`` and its two static files come with a
Content-Security-Policy that allows 'self' only (so no inline script or style, nothing from another
origin), nothing outside the fixed file list can be fetched under /static/, the page's script never
writes catalog text as HTML, and the catalog search ``GET /items`` bounds its input like the other
endpoints (4xx JSON errors, never a 500). Titles (items.json ``titles``): the search matches them,
``GET /items`` and the answers of ``POST /recommend`` / ``POST /funnel`` carry them, and an export
without titles still serves, with null titles."""

from __future__ import annotations

import fnmatch
import json
import re
import socket
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from serving_helpers import live_server
from support import trained_export

from serving.app import (
    MAX_QUERY_CHARS,
    MAX_SEARCH_LIMIT,
    STATIC_DIR,
    STATIC_FILES,
    CatalogSearch,
    create_app,
    load_static_files,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def app():
    return create_app(trained_export()[1])


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def csp_directives(header: str) -> dict[str, list[str]]:
    out = {}
    for part in header.split(";"):
        words = part.split()
        if words:
            out[words[0]] = words[1:]
    return out


def assert_page_headers(r) -> None:
    directives = csp_directives(r.headers["content-security-policy"])
    assert directives["default-src"] == ["'self'"], directives
    for name in ("script-src", "style-src", "connect-src", "img-src"):
        assert directives.get(name, directives["default-src"]) == ["'self'"], (name, directives)
    assert directives["object-src"] == ["'none'"] and directives["frame-ancestors"] == ["'none'"]
    assert directives["base-uri"] == ["'none'"]
    assert r.headers["x-content-type-options"] == "nosniff"


# ---------------------------------------------------------------------------- the page
def test_page_is_html_with_a_self_only_csp(client):
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert_page_headers(r)
    html = r.text
    assert "<title>" in html and 'id="results"' in html
    # every script is an external same-origin file (the CSP would block an inline one)
    scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", html, flags=re.S | re.I)
    assert scripts == [(' src="/static/app.js" defer', "")], scripts
    assert re.findall(r'<link\b[^>]*href="([^"]+)"', html) == ["/static/style.css"]
    # no inline style or handlers, nothing from another origin (the machines are offline)
    assert not re.search(r"<style\b|\sstyle=|\son[a-z]+=", html, flags=re.I)
    assert "http://" not in html and "https://" not in html


def test_static_files_are_the_package_data(client):
    files = load_static_files()
    assert set(files) == set(STATIC_FILES) == {"index.html", "app.js", "style.css"}
    for name, ctype in (("app.js", "text/javascript"), ("style.css", "text/css")):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"] == f"{ctype}; charset=utf-8"
        assert_page_headers(r)
        assert r.content == files[name] == (STATIC_DIR / name).read_bytes()
    assert client.get("/static/index.html").content == client.get("/").content
    for name in ("app.js", "style.css"):
        text = files[name].decode()
        assert "http://" not in text and "https://" not in text and "@import" not in text


def test_static_files_are_declared_as_package_data():
    tomllib = pytest.importorskip("tomllib")
    data = tomllib.loads((REPO / "pyproject.toml").read_text())
    patterns = data["tool"]["setuptools"]["package-data"]["serving"]
    for name in STATIC_FILES:
        assert any(fnmatch.fnmatch(f"static/{name}", p) for p in patterns), (name, patterns)


def test_page_script_never_writes_text_as_html():
    lines = load_static_files()["app.js"].decode().splitlines()
    source = "\n".join(line for line in lines if not line.strip().startswith("//"))  # code, not comments
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in source, sink
    assert "textContent" in source


# ---------------------------------------------------------------------------- no way out of /static
@pytest.mark.parametrize(
    "path",
    [
        "/static/../server.py",
        "/static/..%2fserver.py",
        "/static/%2e%2e%2fserver.py",
        "/static/..%2f..%2fpyproject.toml",
        "/static/server.py",
        "/static/app.py",
        "/static/__init__.py",
        "/static/",
        "/static/static/app.js",
        "/static/APP.JS",
        "/static/app.js%00",
        "/static/%2Fetc%2Fpasswd",
        "/static//etc/passwd",
    ],
)
def test_static_files_cannot_be_escaped(client, path):
    r = client.get(path)
    assert r.status_code == 404, (path, r.status_code, r.text[:200])
    assert r.headers["content-type"] == "application/json" and "error" in r.json()


def test_static_escape_over_a_raw_socket(app):
    """The same through a live server, with the path sent as-is (an HTTP client may normalize ``..``)."""
    from serving.server import ServerLimits

    with live_server(app, ServerLimits(header_timeout=5)) as port:
        for target in (b"/static/../server.py", b"/static/..%2fserver.py", b"/static/../../pyproject.toml"):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            assert data.startswith(b"HTTP/1.1 404"), (target, data[:200])
            body = data.split(b"\r\n\r\n", 1)[1]
            assert b"error" in body and b"import" not in body and b"[project]" not in body, body[:200]


def test_wrong_methods_get_405_with_allow(client):
    for path in ("/", "/static/app.js", "/items"):
        r = client.post(path, json={})
        assert r.status_code == 405 and r.headers.get("allow") == "GET" and "error" in r.json(), path


# ---------------------------------------------------------------------------- GET /items
def ids(r) -> list[str]:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    return [entry["id"] for entry in r.json()["items"]]


def test_search_finds_items_exact_then_prefix_then_substring(client):
    r = client.get("/items", params={"q": "i1"})
    assert ids(r) == ["i1", *(f"i{n}" for n in range(10, 20))]
    assert r.json()["total"] == 11 and r.json()["catalog_size"] == 60 and r.json()["limit"] == 20
    assert ids(client.get("/items", params={"q": " I1 "})) == ids(r)  # any case, spaces trimmed
    r = client.get("/items", params={"q": "5", "limit": 3})
    assert ids(r) == ["i5", "i15", "i25"] and r.json()["total"] == 15
    r = client.get("/items", params={"q": "i42"})
    assert ids(r) == ["i42"] and r.json()["total"] == 1
    r = client.get("/items", params={"q": "<script>alert(1)</script>"})
    assert ids(r) == [] and r.json()["total"] == 0


def test_search_without_q_lists_the_catalog(client):
    r = client.get("/items")
    assert ids(r) == [f"i{n}" for n in range(1, 21)] and r.json()["total"] == 60
    assert ids(client.get("/items", params={"limit": MAX_SEARCH_LIMIT})) == [f"i{n}" for n in range(1, 61)]


def test_search_results_are_valid_history_ids(client):
    found = ids(client.get("/items", params={"q": "i2", "limit": 5}))
    r = client.post("/recommend", json={"history": found, "k": 3})
    assert r.status_code == 200 and r.json()["unknown_items"] == []


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"limit": MAX_SEARCH_LIMIT + 1}, "limit must be an integer in [1, 100]"),
        ({"limit": 0}, "limit must be"),
        ({"limit": -5}, "limit must be"),
        ({"limit": "ten"}, "limit must be"),
        ({"limit": "1.5"}, "limit must be"),
        ({"limit": 10**30}, "limit must be"),
        ({"q": "x" * (MAX_QUERY_CHARS + 1)}, "q has more than 200 characters"),
        ({"q": "é" * 10_000}, "q has more than"),
    ],
)
def test_search_input_is_bounded(client, params, needle):
    r = client.get("/items", params=params)
    assert r.status_code == 422, r.text
    assert needle in r.json()["error"] and r.json()["detail"]


def test_search_edge_inputs_never_500(client):
    assert client.get("/items", params={"q": "x" * MAX_QUERY_CHARS}).status_code == 200
    assert client.get("/items", params={"limit": MAX_SEARCH_LIMIT}).status_code == 200
    for raw in ("q=%ff%fe", "q=%00", "q=%", "q=a&q=b", "limit=&q=i1", "q=%F0%9F%98%80", "unknown=1"):
        r = client.get(f"/items?{raw}")
        assert r.status_code < 500 and ("error" in r.json() or "items" in r.json()), (raw, r.text)


def test_openapi_states_the_search_bounds(client):
    paths = client.get("/openapi.json").json()["paths"]
    params = {p["name"]: p["schema"] for p in paths["/items"]["get"]["parameters"]}
    assert params["q"]["maxLength"] == MAX_QUERY_CHARS
    assert params["limit"]["minimum"] == 1 and params["limit"]["maximum"] == MAX_SEARCH_LIMIT
    assert "/" not in paths and not any(p.startswith("/static") for p in paths)


def test_recommend_reports_its_model_time(client):
    r = client.post("/recommend", json={"history": ["i1", "i2"], "k": 3, "tier": "d4"})
    assert r.status_code == 200
    match = re.fullmatch(r"recommend;dur=([0-9.]+)", r.headers["server-timing"])
    assert match and float(match.group(1)) >= 0


# ---------------------------------------------------------------------------- titles
def test_items_come_with_their_titles(client):
    r = client.get("/items", params={"limit": 3})
    assert r.json()["items"] == [{"id": f"i{n}", "title": f"item {n}"} for n in (1, 2, 3)]


def test_search_matches_titles_any_case(client):
    r = client.get("/items", params={"q": "ITEM 1"})  # the exact title first, then titles starting with it
    assert ids(r) == ["i1", *(f"i{n}" for n in range(10, 20))] and r.json()["total"] == 11
    assert r.json()["items"][0] == {"id": "i1", "title": "item 1"}
    r = client.get("/items", params={"q": "tem 4"})  # a part of the title words
    assert ids(r) == ["i4", *(f"i{n}" for n in range(40, 50))] and r.json()["total"] == 11
    assert all(entry["title"].startswith("item 4") for entry in r.json()["items"])
    r = client.get("/items", params={"q": "item"})
    assert r.json()["total"] == 60 and ids(r) == [f"i{n}" for n in range(1, 21)]


def test_search_orders_exact_id_exact_title_prefix_substring():
    search = CatalogSearch(
        ["x4", "x3", "x2", "x1", "ab", "abz"], ["zzz", "the Ab", "Abc thing", "AB", "", "other"]
    )
    assert search.search("ab", 10) == (["ab", "x1", "x2", "abz", "x3"], 5)
    assert search.search("AB", 2) == (["ab", "x1"], 5)
    assert search.search("thing", 10) == (["x2"], 1)
    assert search.title("ab") is None and search.title("x1") == "AB" and search.title("nope") is None
    untitled = CatalogSearch(["ab", "xab"])
    assert untitled.search("ab", 10) == (["ab", "xab"], 2) and untitled.title("ab") is None
    with pytest.raises(ValueError, match="2 titles for 3 item ids"):
        CatalogSearch(["a", "b", "c"], ["a", "b"])


def test_recommend_and_funnel_answer_titles_next_to_items(client):
    for path, extra in (("/recommend", {"tier": "d8"}), ("/funnel", {"shortlist": 20})):
        r = client.post(path, json={"history": ["i1", "i2"], "k": 5, **extra})
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["items"]) == 5 and body["titles"] == [f"item {i[1:]}" for i in body["items"]]
        assert len(body["scores"]) == 5 and body["unknown_items"] == []


def without_titles(export_dir: Path, reseal) -> None:
    """Every items.json of ``export_dir`` as older exports wrote it: item ids only."""
    for folder in export_dir.iterdir():
        if (folder / "items.json").is_file():
            data = json.loads((folder / "items.json").read_text())
            (folder / "items.json").write_text(json.dumps({"item_ids": data["item_ids"]}))
    reseal(export_dir)


def test_an_export_without_titles_still_serves_with_null_titles(export_copy, reseal):
    without_titles(export_copy, reseal)
    with TestClient(create_app(export_copy), raise_server_exceptions=False) as c:
        r = c.get("/items", params={"q": "i1", "limit": 2})
        assert r.json()["items"] == [{"id": "i1", "title": None}, {"id": "i10", "title": None}]
        assert c.get("/items", params={"q": "item 1"}).json()["total"] == 0  # ids only
        for path in ("/recommend", "/funnel"):
            body = c.post(path, json={"history": ["i1", "i2"], "k": 4}).json()
            assert len(body["items"]) == 4 and body["titles"] == [None] * 4, body


def test_empty_titles_are_null_and_each_size_answers_its_own(export_copy, reseal):
    for folder in export_copy.iterdir():
        if (folder / "items.json").is_file():
            data = json.loads((folder / "items.json").read_text())
            data["titles"] = [
                "" if i % 2 else f"{folder.name} t{i + 1}" for i in range(len(data["item_ids"]))
            ]
            (folder / "items.json").write_text(json.dumps(data))
    reseal(export_copy)
    with TestClient(create_app(export_copy), raise_server_exceptions=False) as c:
        assert [e["title"] for e in c.get("/items", params={"limit": 4}).json()["items"]] == [
            "d0004 t1",
            None,
            "d0004 t3",
            None,
        ]
        for tier in ("d4", "d16"):
            body = c.post("/recommend", json={"history": ["i1"], "k": 10, "tier": tier}).json()
            expected = [
                None if int(i[1:]) % 2 == 0 else f"d{int(tier[1:]):04d} t{i[1:]}" for i in body["items"]
            ]
            assert body["titles"] == expected
