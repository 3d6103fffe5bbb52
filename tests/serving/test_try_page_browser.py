"""The try-it page in a real browser: headless Chromium loads ``/?history=...&tiers=...&k=...`` from a live
server on the tiny export, the page renders on load, and the DOM Chromium dumps must hold one column per
tier with the same k items and scores as ``POST /recommend`` and a latency; a JS error, a failed call or
a page that never finishes leaves no such DOM, so the test fails. Items are shown as "title (id)" (the
tiny dataset's titles are "item N") in the history, the search results and the columns. A second
catalog whose item ids and titles are HTML markup checks that the page shows them as text and never
parses them.

Skipped (with the reason) when no ``chromium`` is on PATH (Debian/Ubuntu: ``apt-get install chromium``).
No Playwright/Selenium: ``chromium --headless --dump-dom`` with a virtual-time budget is enough."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from html.parser import HTMLParser

import pytest
from serving_helpers import live_server, reseal_export
from support import trained_export

from serving.app import create_app
from serving.server import ServerLimits

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="the browser test needs Chromium on PATH (apt-get install chromium)"
)

VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list = field(default_factory=list)  # Node or str

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def iter(self):
        yield self
        for c in self.children:
            if isinstance(c, Node):
                yield from c.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None) -> list[Node]:
        return [
            n
            for n in self.iter()
            if (tag is None or n.tag == tag) and (cls is None or cls in n.attrs.get("class", "").split())
        ]

    def find(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> Node:
        found = [n for n in self.find_all(tag, cls) if all(n.attrs.get(k) == v for k, v in attrs.items())]
        assert len(found) == 1, (tag, cls, attrs, len(found))
        return found[0]


class TreeBuilder(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                break

    def handle_data(self, data):
        self.stack[-1].children.append(data)


def parse(html: str) -> Node:
    builder = TreeBuilder()
    builder.feed(html)
    builder.close()
    return builder.root


def dump_dom(url: str) -> str:
    """The DOM of ``url`` after its scripts ran (up to 15 s of virtual time), as headless Chromium
    serializes it."""
    with tempfile.TemporaryDirectory(prefix="recsys-chromium-") as profile:
        out = subprocess.run(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--no-default-browser-check",
                f"--user-data-dir={profile}",
                "--virtual-time-budget=15000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert out.returncode == 0 and "<body" in out.stdout, (out.returncode, out.stderr[-3000:])
    return out.stdout


def api(port: int, path: str, payload: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=None if payload is None else json.dumps(payload).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.load(r)


def page_url(port: int, history: list[str], tiers: list[str], k: int, q: str | None = None) -> str:
    params = {"history": ",".join(history), "tiers": ",".join(tiers), "k": str(k)}
    if q is not None:
        params["q"] = q
    return f"http://127.0.0.1:{port}/?" + urllib.parse.urlencode(params, quote_via=urllib.parse.quote)


def label(item: str, title: str | None) -> str:
    """How the page shows an item: "title (id)", the id alone without a title."""
    return f"{title} ({item})" if title else item


def check_comparison(
    dom: Node, port: int, history: list[str], tiers: list[str], k: int, titles: dict[str, str]
) -> list[Node]:
    """The page finished without a JS error and shows, per tier and in order, the k items (as
    "title (id)", with the id in data-item) and scores that POST /recommend answers, plus a latency,
    and the history as "title (id)" (``titles``: id -> title); returns the tier columns."""
    body = dom.find("body")
    assert "data-js-error" not in body.attrs, body.attrs["data-js-error"]
    assert body.attrs.get("data-state") == "done", (body.attrs, dom.find(None, None, id="status").text())
    columns = dom.find_all("section", "tier-result")
    assert [c.attrs["data-tier"] for c in columns] == tiers
    for column, tier in zip(columns, tiers):
        expected = api(port, "/recommend", {"history": history, "k": k, "tier": tier, "exclude_seen": True})
        assert column.attrs["data-status"] == "ok", column.text()
        rows = column.find("tbody").find_all("tr")
        assert len(rows) == k == len(expected["items"]), (tier, len(rows))
        assert [r.find("td", "rank").text() for r in rows] == [str(i) for i in range(1, k + 1)]
        cells = [r.find("td", "item") for r in rows]
        assert [c.attrs["data-item"] for c in cells] == expected["items"]
        assert len(expected["titles"]) == k
        assert [c.text() for c in cells] == [
            label(i, t) for i, t in zip(expected["items"], expected["titles"])
        ]
        cells = [r.find("td", "score") for r in rows]
        assert [float(c.attrs["data-score"]) for c in cells] == expected["scores"]  # JS String(x) round-trips
        assert [float(c.text()) for c in cells] == pytest.approx(expected["scores"], abs=1e-4)
        latency = column.find("p", "latency")
        assert float(latency.attrs["data-ms"]) > 0 and latency.text().split()[1] == "ms", latency.text()
    shown = [li.find("span", "item") for li in dom.find("ol", None, id="history").find_all("li")]
    assert [s.attrs["data-item"] for s in shown] == history
    assert [s.text() for s in shown] == [label(i, titles.get(i)) for i in history]
    return columns


def test_page_renders_each_tiers_top_k_from_the_query_string():
    app = create_app(trained_export()[1])
    with live_server(app, ServerLimits()) as port:
        history, tiers, k = ["i10", "i11"], ["d4", "d8"], 5
        dom = parse(dump_dom(page_url(port, history, tiers, k)))
        (first, _) = check_comparison(dom, port, history, tiers, k, {"i10": "item 10", "i11": "item 11"})
        assert (
            first.find("tbody")
            .find_all("td", "item")[0]
            .find("span", "item-title")
            .text()
            .startswith("item ")
        )
        # the catalog list (no q: the first 20 items, "title (id)") and the tier choices from GET /info
        buttons = dom.find("ul", None, id="search-results").find_all("button")
        assert [b.text() for b in buttons] == [f"item {n} (i{n})" for n in range(1, 21)]
        assert [b.attrs["data-item"] for b in buttons] == [f"i{n}" for n in range(1, 21)]
        boxes = dom.find("fieldset", None, id="tiers").find_all("input")
        assert [b.attrs["value"] for b in boxes] == ["d4", "d8", "d16"]  # by size


def test_search_by_title_shows_titles():
    """q= a title word: the search results are the items whose titles hold it, shown "title (id)"."""
    app = create_app(trained_export()[1])
    with live_server(app, ServerLimits()) as port:
        dom = parse(dump_dom(page_url(port, ["i3"], ["d4"], 3, q="ITEM 5")))
        check_comparison(dom, port, ["i3"], ["d4"], 3, {"i3": "item 3"})
        buttons = dom.find("ul", None, id="search-results").find_all("button")
        assert [b.text() for b in buttons] == [
            f"item {n} (i{n})" for n in (5, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59)
        ]
        assert [b.find("span", "item-title").text() for b in buttons][:2] == ["item 5", "item 50"]


def test_catalog_text_is_shown_as_text_never_parsed(export_copy):
    """Item ids and titles that are markup (the catalog is untrusted) come out as literal text everywhere
    the page shows them: history, search results, result columns; no element of theirs appears in the DOM.
    Every other item has no title ("" in items.json): shown by its id alone."""

    def hostile(i: int) -> str:
        return f'<b class="pwn">i{i}</b><img class="pwn" src="x" onerror="alert(1)">&amp;"\'</td>'

    def hostile_title(i: int) -> str:
        return "" if i % 2 else f'<i class="pwn">t{i}</i><script class="pwn">alert(2)</script>&lt;'

    for folder in export_copy.iterdir():
        if (folder / "items.json").is_file():
            ids = [int(x[1:]) for x in json.loads((folder / "items.json").read_text())["item_ids"]]
            data = {"item_ids": [hostile(i) for i in ids], "titles": [hostile_title(i) for i in ids]}
            (folder / "items.json").write_text(json.dumps(data))
    reseal_export(export_copy)
    app = create_app(export_copy)
    with live_server(app, ServerLimits()) as port:
        history, tiers, k = [hostile(20), hostile(21)], ["d16"], 4
        dom = parse(dump_dom(page_url(port, history, tiers, k, q="<b")))
        titles = {hostile(i): hostile_title(i) for i in range(1, 61)}
        (column,) = check_comparison(dom, port, history, tiers, k, titles)
        assert all(">i" in td.text() for td in column.find_all("td", "item"))
        found = [b.text() for b in dom.find("ul", None, id="search-results").find_all("button")]
        assert found == [label(hostile(i), hostile_title(i)) for i in range(1, 21)]
        assert any("<script" in text for text in found)  # titles shown, as text
        assert dom.find_all(cls="pwn") == [] and dom.find_all("b") == [] and dom.find_all("img") == []
        assert dom.find_all("i") == [] and len(dom.find_all("script")) == 1  # app.js only
