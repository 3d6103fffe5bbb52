"""HTTP serving (FastAPI): ``create_app(export_dir, tiers=None)``.

    POST /recommend  {"history": [ids...], "k": 10, "tier": "d64", "exclude_seen": true}
        -> {"items", "scores", "tier", "size", "unknown_items", "truncated"}
    POST /funnel     {"history", "k", "small": "d32", "large": "d256", "shortlist": 200, "exclude_seen"}
    GET  /health     GET /info

Every bad request gets a JSON error ``{"error": message, ...}`` with a 4xx status, never a 500:
malformed JSON 400, schema violations / empty history / no known item / k out of range 422,
unknown tier 404 (with the known tiers), body over ``max_body_bytes`` (1 MiB) 413.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.funnel import FunnelRecommender
from serving.recommender import RequestError
from serving.tiers import TierSet

log = logging.getLogger("serving.app")
MAX_BODY_BYTES = 1 << 20

ItemId = StrictStr | StrictInt


class RecommendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    history: list[ItemId]
    k: StrictInt = 10
    tier: StrictStr | None = None
    exclude_seen: StrictBool = True


class FunnelRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    history: list[ItemId]
    k: StrictInt = 10
    small: StrictStr | None = None
    large: StrictStr | None = None
    shortlist: StrictInt = Field(default=200)
    exclude_seen: StrictBool = True


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message, **extra})


class BodySizeLimit:
    """ASGI middleware: 413 for a body over ``limit`` bytes (declared Content-Length, or counted
    while reading a body without one), 400 for an invalid Content-Length."""

    def __init__(self, app, limit: int = MAX_BODY_BYTES):
        self.app, self.limit = app, limit

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
                return await _error(413, f"request body of {length} bytes exceeds the limit of {self.limit} bytes")(
                    scope, receive, send
                )
            return await self.app(scope, receive, send)
        # no Content-Length (chunked): buffer up to the limit, then replay
        chunks, total, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return await self.app(scope, _replay([message]), send)
            body = message.get("body", b"")
            total += len(body)
            if total > self.limit:
                return await _error(413, f"request body exceeds the limit of {self.limit} bytes")(scope, receive, send)
            chunks.append(body)
            more = message.get("more_body", False)
        return await self.app(scope, _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}]),
                              send)


def _replay(messages):
    pending = list(messages)

    async def receive():
        if pending:
            return pending.pop(0)
        return {"type": "http.disconnect"}

    return receive


def _validation_detail(errors) -> list[dict[str, Any]]:
    """Pydantic errors reduced to JSON-safe fields (the raw input may be anything)."""
    return [{"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in errors][:20]


def create_app(
    export_dir: str | Path,
    tiers: dict[str, int] | str | Path | None = None,
    engine: str = "python",
    max_body_bytes: int = MAX_BODY_BYTES,
    verify: bool = True,
    ann: str | None = None,
) -> FastAPI:
    """The serving app for an export directory; ``tiers``: name -> size, a YAML tiers file, or
    None (every exported size as ``d<size>``); ``ann``: None, "flat" or "hnsw" (faiss, optional)."""
    tier_set = TierSet(export_dir, tiers, engine=engine, verify=verify, ann=ann)
    any_rec = next(iter(tier_set.by_size.values()))
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
        return _error(422, "invalid request", detail=_validation_detail(errors))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, err: StarletteHTTPException):
        return _error(err.status_code, str(err.detail))

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
        }

    @app.post("/recommend")
    def recommend(req: RecommendRequest):
        name = req.tier or tier_set.default
        rec = tier_set.get(name)
        result = rec.query(req.history, req.k, req.exclude_seen)
        return {"items": result.items, "scores": result.scores, "tier": name, "size": rec.size,
                "unknown_items": result.unknown_items, "truncated": result.truncated}

    @app.post("/funnel")
    def funnel(req: FunnelRequest):
        by_size = sorted(tier_set.tiers, key=lambda n: tier_set.tiers[n])
        small_name, large_name = req.small or by_size[0], req.large or by_size[-1]
        small, large = tier_set.get(small_name), tier_set.get(large_name)
        result = FunnelRecommender(small, large, req.shortlist).query(req.history, req.k, req.exclude_seen)
        return {"items": result.items, "scores": result.scores, "tier": f"{small_name}->{large_name}",
                "size": large.size, "shortlist": req.shortlist, "unknown_items": result.unknown_items,
                "truncated": result.truncated}

    app.add_middleware(BodySizeLimit, limit=max_body_bytes)
    return app
