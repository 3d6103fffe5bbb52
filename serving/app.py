"""HTTP serving (FastAPI): ``create_app(export_dir, tiers=None)``.

    POST /recommend  {"history": [ids...], "k": 10, "tier": "d64", "exclude_seen": true}
        -> {"items", "titles", "scores", "tier", "size", "unknown_items", "truncated"}
    POST /funnel     {"history", "k", "small": "d32", "large": "d256", "shortlist": 200, "exclude_seen"}
        -> the same, plus "shortlist"
    GET  /health     GET /info
    GET  /items?q=star&limit=20  -> {"items": [{"id", "title"}], "total", "q", "limit", "catalog_size"}:
         catalog search (case-insensitive substring of the original item id or of its title; q at
         most 200 characters, 1 <= limit <= 100, else 422)
    GET  /           the try-it page (serving/static/index.html), GET /static/{app.js,style.css}: only
         the files named in ``STATIC_FILES``, with a Content-Security-Policy allowing 'self' only

``titles`` (parallel to ``items``) and ``title`` come from the export's items.json; null where the
export has no title for the item (older exports, datasets without text).

Every bad request gets a JSON error ``{"error": message, ...}`` with a 4xx status, never a 500:
malformed JSON 400, schema violations / empty history / history over ``max_history`` ids / no known
item / k out of range 422, unknown tier 404 (with the known tiers), wrong method 405 (with ``Allow``),
body over ``max_body_bytes`` (1 MiB) 413, body not received within ``body_timeout`` seconds 408.
The OpenAPI schema (``/openapi.json``) states the same bounds (history 1..max_history ids,
k in [1, catalog size], shortlist >= 1).
"""

# no ``from __future__ import annotations``: FastAPI resolves the endpoints' annotations at decoration
# time, and the request models are built per app (their bounds depend on it), inside create_app.
import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, create_model
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.funnel import FunnelRecommender
from serving.recommender import RequestError
from serving.tiers import TierSet

log = logging.getLogger("serving.app")
MAX_BODY_BYTES = 1 << 20
BODY_TIMEOUT_S = 10.0

ItemId = StrictStr | StrictInt

MAX_QUERY_CHARS = 200  # GET /items: longest search string
MAX_SEARCH_LIMIT = 100  # GET /items: most items per answer
DEFAULT_SEARCH_LIMIT = 20

# The try-it page: the only files served under /static/ (a fixed list, read once at start-up from the
# package data: no path from the request ever reaches the file system).
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "content-security-policy": PAGE_CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-cache",
}


STATIC_DIR = Path(__file__).resolve().parent / "static"


def load_static_files() -> dict[str, bytes]:
    """The try-it page's files (``STATIC_FILES``) from the package data, serving/static/. Found next to
    this file rather than with ``importlib.resources.files("serving")``: that looks the package up by
    name, and a folder named ``serving`` without ``__init__.py`` earlier on sys.path (tests/serving,
    under pytest's ``pythonpath = ["tests"]`` when run as ``pytest``) is then taken for it."""
    return {name: (STATIC_DIR / name).read_bytes() for name in STATIC_FILES}


class CatalogSearch:
    """Case-insensitive substring search over the catalog's original item ids and their titles (when
    the export has them): the exact id first, then exact titles, then ids or titles starting with the
    query, then ids or titles containing it, each group in catalog order. An empty query lists the
    catalog from its start."""

    def __init__(self, item_ids: Sequence[str], titles: Sequence[str] | None = None):
        self.item_ids = list(item_ids)
        if titles is not None and len(titles) != len(self.item_ids):
            raise ValueError(f"{len(titles)} titles for {len(self.item_ids)} item ids")
        self.titles = None if titles is None else list(titles)
        self.by_id = {} if self.titles is None else dict(zip(self.item_ids, self.titles))
        self.folded = [item.casefold() for item in self.item_ids]
        self.folded_titles = [t.casefold() for t in self.titles or [""] * len(self.item_ids)]

    def title(self, item: str) -> str | None:
        """The title of ``item``; None when unknown (no titles, an empty one, or not in the catalog)."""
        return self.by_id.get(item) or None

    def search(self, q: str, limit: int) -> tuple[list[str], int]:
        """(the first ``limit`` matching ids, how many items match)."""
        needle = q.strip().casefold()
        if not needle:
            return self.item_ids[:limit], len(self.item_ids)
        groups: tuple[list[str], ...] = ([], [], [], [])  # exact id, exact title, prefix, substring
        for item, folded, title in zip(self.item_ids, self.folded, self.folded_titles):
            if folded == needle:
                groups[0].append(item)
            elif title == needle:
                groups[1].append(item)
            elif folded.startswith(needle) or title.startswith(needle):
                groups[2].append(item)
            elif needle in folded or needle in title:
                groups[3].append(item)
        found = [item for group in groups for item in group]
        return found[:limit], len(found)


def request_models(max_history: int, catalog_size: int) -> tuple[type[BaseModel], type[BaseModel]]:
    """(RecommendRequest, FunnelRequest) with the app's bounds in the schema: 1..max_history history
    ids, 1 <= k <= catalog_size, shortlist >= 1."""
    history = Annotated[
        list[ItemId],
        Field(min_length=1, max_length=max_history, description="original item ids, oldest first"),
    ]
    k = Annotated[StrictInt, Field(ge=1, le=catalog_size, description="number of items to return")]
    common: dict[str, Any] = {"history": (history, ...), "k": (k, 10), "exclude_seen": (StrictBool, True)}
    config = ConfigDict(extra="forbid")
    recommend = create_model("RecommendRequest", __config__=config, **common, tier=(StrictStr | None, None))
    funnel = create_model(
        "FunnelRequest",
        __config__=config,
        **common,
        small=(StrictStr | None, None),
        large=(StrictStr | None, None),
        shortlist=(Annotated[StrictInt, Field(ge=1, description="candidates kept by the small tier")], 200),
    )
    return recommend, funnel


def _error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message, **extra}, headers=headers)


class BodySizeLimit:
    """ASGI middleware: reads the whole request body before the app sees it, answering 413 for a body
    over ``limit`` bytes (declared Content-Length, or counted while reading a body without one), 400 for
    an invalid Content-Length, and 408 when the body has not fully arrived within ``timeout`` seconds."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES, timeout: float = BODY_TIMEOUT_S):
        self.app, self.limit, self.timeout = app, limit, timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
                if length < 0:
                    raise ValueError
            except ValueError:
                return await _error(400, "invalid Content-Length header")(scope, receive, send)
            if length > self.limit:
                return await _error(
                    413, f"request body of {length} bytes exceeds the limit of {self.limit} bytes"
                )(scope, receive, send)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        chunks, total, more = [], 0, True
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0.01))
            except asyncio.TimeoutError:
                return await _error(
                    408,
                    f"request body not received within {self.timeout:g} s",
                    headers={"connection": "close"},
                )(scope, receive, send)
            if message["type"] != "http.request":  # the client went away
                return await self.app(scope, _replay([message], receive), send)
            body = message.get("body", b"")
            total += len(body)
            if total > self.limit:
                return await _error(
                    413,
                    f"request body exceeds the limit of {self.limit} bytes",
                    headers={"connection": "close"},
                )(scope, receive, send)
            chunks.append(body)
            more = message.get("more_body", False)
        body = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        return await self.app(scope, _replay([body], receive), send)


def _replay(messages, receive):
    """An ASGI receive that returns ``messages`` first, then defers to ``receive``."""
    pending = list(messages)

    async def replay():
        if pending:
            return pending.pop(0)
        return await receive()

    return replay


_HINTS = {
    ("history", "too_short"): lambda ctx: "history is empty; give at least one known item id",
    ("history", "too_long"): lambda ctx: (
        f"history has more than max_history={ctx.get('max_length')} item ids"
    ),
    ("k", "greater_than_equal"): lambda ctx: "k must be an integer in [1, {catalog}] (the catalog size)",
    ("k", "less_than_equal"): lambda ctx: "k must be an integer in [1, {catalog}] (the catalog size)",
    ("shortlist", "greater_than_equal"): lambda ctx: "shortlist must be a positive integer",
    ("q", "string_too_long"): lambda ctx: f"q has more than {ctx.get('max_length')} characters",
    ("limit", "greater_than_equal"): lambda ctx: f"limit must be an integer in [1, {MAX_SEARCH_LIMIT}]",
    ("limit", "less_than_equal"): lambda ctx: f"limit must be an integer in [1, {MAX_SEARCH_LIMIT}]",
    ("limit", "int_parsing"): lambda ctx: f"limit must be an integer in [1, {MAX_SEARCH_LIMIT}]",
}


def _validation_message(errors, catalog_size: int) -> str:
    """ "invalid request", plus a plain-words hint for the bounds the schema states."""
    hints = []
    for e in errors:
        loc = [x for x in e.get("loc", ()) if x not in ("body", "query")]
        hint = _HINTS.get((str(loc[0]) if len(loc) == 1 else "", str(e.get("type", ""))))
        if hint is not None:
            text = hint(e.get("ctx") or {}).format(catalog=catalog_size)
            if text not in hints:
                hints.append(text)
    return "invalid request" + (": " + "; ".join(hints) if hints else "")


def _validation_detail(errors) -> list[dict[str, Any]]:
    """Pydantic errors reduced to JSON-safe fields (the raw input may be anything)."""
    return [
        {
            "loc": [str(x) for x in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in errors
    ][:20]


def create_app(
    export_dir: str | Path,
    tiers: dict[str, int] | str | Path | None = None,
    engine: str = "python",
    max_body_bytes: int = MAX_BODY_BYTES,
    verify: bool = True,
    ann: str | None = None,
    *,
    trust_program: bool = False,
    expect_digest: str | None = None,
    max_history: int | None = None,
    body_timeout: float = BODY_TIMEOUT_S,
) -> FastAPI:
    """The serving app for an export directory; ``tiers``: name -> size, a YAML tiers file, or
    None (every exported size as ``d<size>``); ``ann``: None, "flat" or "hnsw" (faiss, optional).

    ``trust_program``: allow ``engine="program"`` (it unpickles program.pt2); ``expect_digest``: refuse
    an export whose digest differs; ``max_history``: most ids per request (None: ``max(1000, max_len)``);
    ``max_body_bytes`` / ``body_timeout``: request body size (bytes) and arrival time (seconds)."""
    if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int) or max_body_bytes < 1:
        raise ValueError(f"max_body_bytes must be a positive integer, got {max_body_bytes!r}")
    if not body_timeout > 0:
        raise ValueError(f"body_timeout must be > 0 seconds, got {body_timeout!r}")
    tier_set = TierSet(
        export_dir,
        tiers,
        engine=engine,
        verify=verify,
        ann=ann,
        trust_program=trust_program,
        expect_digest=expect_digest,
        max_history=max_history,
    )
    any_rec = next(iter(tier_set.by_size.values()))
    history_cap = max(rec.max_history for rec in tier_set.by_size.values())
    RecommendRequest, FunnelRequest = request_models(history_cap, any_rec.num_items)  # noqa: N806
    # every size of one export shares the catalog; each size's answers take the titles of its own items.json
    catalog = CatalogSearch(any_rec.item_ids, getattr(any_rec.artifact, "titles", None))
    title_maps: dict[int, dict[str, str]] = {}
    for size, rec in tier_set.by_size.items():
        titles = getattr(rec.artifact, "titles", None)
        same = rec.item_ids == catalog.item_ids and titles == catalog.titles
        title_maps[size] = catalog.by_id if same else dict(zip(rec.item_ids, titles or ()))

    def titles_of(size: int, items: Sequence[str]) -> list[str | None]:
        """The title of each item (null where unknown), as the tier of ``size`` has them."""
        by_id = title_maps[size]
        return [by_id.get(item) or None for item in items]

    static_files = load_static_files()
    app = FastAPI(title="recsys serving", version="1")
    app.state.tiers = tier_set

    @app.exception_handler(RequestError)
    async def request_error(_: Request, err: RequestError):
        return _error(err.status_code, err.message, **err.extra)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, err: RequestValidationError):
        errors = err.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(400, "malformed JSON body", detail=_validation_detail(errors))
        return _error(422, _validation_message(errors, any_rec.num_items), detail=_validation_detail(errors))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException):
        return _error(err.status_code, str(err.detail), headers=getattr(err, "headers", None))

    @app.exception_handler(Exception)
    async def internal_error(_: Request, err: Exception):  # pragma: no cover - a bug, logged
        log.exception("internal error")
        return _error(500, "internal server error")

    @app.get("/health")
    def health():
        return {"status": "ok", "tiers": sorted(tier_set.tiers)}

    @app.get("/info")
    def info():
        return {
            "tiers": tier_set.info(),
            "default_tier": tier_set.default,
            "sizes": sorted(tier_set.by_size),
            "catalog_size": any_rec.num_items,
            "max_len": any_rec.max_len,
            "engine": engine,
            "ann": ann,
            "max_body_bytes": max_body_bytes,
            "max_history": history_cap,
            "body_timeout_s": body_timeout,
            "digest": tier_set.digest,
        }

    @app.get("/items")
    def items(
        q: Annotated[
            str,
            Query(max_length=MAX_QUERY_CHARS, description="part of an original item id or title (any case)"),
        ] = "",
        limit: Annotated[
            int, Query(ge=1, le=MAX_SEARCH_LIMIT, description="most items returned")
        ] = DEFAULT_SEARCH_LIMIT,
    ):
        found, total = catalog.search(q, limit)
        return {
            "items": [{"id": item, "title": catalog.title(item)} for item in found],
            "total": total,
            "q": q,
            "limit": limit,
            "catalog_size": len(catalog.item_ids),
        }

    @app.get("/", include_in_schema=False)
    def page():
        return Response(
            static_files["index.html"], media_type=STATIC_FILES["index.html"], headers=PAGE_HEADERS
        )

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str):
        if name not in static_files:  # a fixed list: nothing else is ever read
            return _error(404, "not found")
        return Response(static_files[name], media_type=STATIC_FILES[name], headers=PAGE_HEADERS)

    @app.post("/recommend")
    def recommend(req: RecommendRequest, response: Response):
        name = req.tier or tier_set.default
        rec = tier_set.get(name)
        start = time.perf_counter()
        result = rec.query(req.history, req.k, req.exclude_seen)
        response.headers["server-timing"] = f"recommend;dur={(time.perf_counter() - start) * 1000:.3f}"
        return {
            "items": result.items,
            "titles": titles_of(rec.size, result.items),
            "scores": result.scores,
            "tier": name,
            "size": rec.size,
            "unknown_items": result.unknown_items,
            "truncated": result.truncated,
        }

    @app.post("/funnel")
    def funnel(req: FunnelRequest):
        by_size = sorted(tier_set.tiers, key=lambda n: tier_set.tiers[n])
        small_name, large_name = req.small or by_size[0], req.large or by_size[-1]
        small, large = tier_set.get(small_name), tier_set.get(large_name)
        result = FunnelRecommender(small, large, req.shortlist).query(req.history, req.k, req.exclude_seen)
        return {
            "items": result.items,
            "titles": titles_of(large.size, result.items),
            "scores": result.scores,
            "tier": f"{small_name}->{large_name}",
            "size": large.size,
            "shortlist": req.shortlist,
            "unknown_items": result.unknown_items,
            "truncated": result.truncated,
        }

    app.add_middleware(BodySizeLimit, limit=max_body_bytes, timeout=body_timeout)
    return app
