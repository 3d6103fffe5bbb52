"""Running the app under uvicorn with connection limits (docs/serving.md, Security).

uvicorn times out idle keep-alive connections (``timeout_keep_alive``) and caps connections
(``limit_concurrency``: over it, requests get 503) and the bytes of an unfinished request head
(``h11_max_incomplete_event_size``), but it never times out a request head that has not finished
arriving: a client that sends a partial header (or nothing) holds its connection forever. The h11
protocol below closes any connection whose request head is not complete within ``header_timeout``
seconds of its first byte (or of the connection, for the first request); the clock is not reset by
more bytes, so trickling one byte at a time does not help. The request body is bounded in time and
size by the app itself (``create_app(body_timeout=..., max_body_bytes=...)``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

DEFAULT_HEADER_TIMEOUT_S = 10.0
DEFAULT_KEEP_ALIVE_S = 5
DEFAULT_LIMIT_CONCURRENCY = 128
DEFAULT_MAX_HEADER_BYTES = 16 * 1024


@dataclass(frozen=True)
class ServerLimits:
    """Connection limits passed to uvicorn.

    ``header_timeout``: seconds a request head may take to arrive; ``timeout_keep_alive``: seconds an
    idle keep-alive connection is kept; ``limit_concurrency``: connections (and in-flight requests)
    beyond which uvicorn answers 503; ``max_header_bytes``: the most bytes of an unfinished request
    head that are buffered (more: 400)."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S
    timeout_keep_alive: int = DEFAULT_KEEP_ALIVE_S
    limit_concurrency: int | None = DEFAULT_LIMIT_CONCURRENCY
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES

    def __post_init__(self) -> None:
        if not self.header_timeout > 0:
            raise ValueError(f"header_timeout must be > 0 seconds, got {self.header_timeout!r}")
        if not self.timeout_keep_alive > 0:
            raise ValueError(f"timeout_keep_alive must be > 0 seconds, got {self.timeout_keep_alive!r}")
        if self.limit_concurrency is not None and self.limit_concurrency < 1:
            raise ValueError(f"limit_concurrency must be >= 1, got {self.limit_concurrency!r}")
        if self.max_header_bytes < 1024:
            raise ValueError(f"max_header_bytes must be >= 1024, got {self.max_header_bytes!r}")


class HeaderTimeoutH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a deadline for each request head (``header_timeout`` seconds)."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT_S

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # still waiting for (the rest of) a request head
            self._arm_header_timer()
        else:
            self._cancel_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        if self._header_timer is None and not self.transport.is_closing():
            self._header_timer = self.loop.call_later(self.header_timeout, self._header_timed_out)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.logger.info(
                "closing a connection whose request head did not arrive within %.1f s", self.header_timeout
            )
            self.transport.close()


def header_timeout_protocol(header_timeout: float) -> type[HeaderTimeoutH11Protocol]:
    """A :class:`HeaderTimeoutH11Protocol` subclass bound to ``header_timeout`` seconds."""
    return type(
        "HeaderTimeoutH11Protocol", (HeaderTimeoutH11Protocol,), {"header_timeout": float(header_timeout)}
    )


def uvicorn_config(
    app: Any, host: str, port: int, limits: ServerLimits | None = None, **kwargs: Any
) -> uvicorn.Config:
    """uvicorn.Config for ``app`` with ``limits`` applied (h11 protocol with the header deadline, no
    websockets); ``kwargs`` go to uvicorn.Config (e.g. ``log_level``)."""
    limits = limits or ServerLimits()
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=header_timeout_protocol(limits.header_timeout),
        ws="none",
        timeout_keep_alive=limits.timeout_keep_alive,
        limit_concurrency=limits.limit_concurrency,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        **kwargs,
    )


def run_server(app: Any, host: str, port: int, limits: ServerLimits | None = None) -> None:
    """Serve ``app`` until interrupted."""
    uvicorn.Server(uvicorn_config(app, host, port, limits)).run()
