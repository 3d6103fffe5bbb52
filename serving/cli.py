"""``recsys-serve EXPORT_DIR [--tiers FILE] [--host 127.0.0.1] [--port 8000] [--engine python|program]
[--trust-program] [--expect-digest HEX] [--ann flat|hnsw] [limits...]``.

The default start-up reads only safetensors and JSON. ``--engine program`` unpickles program.pt2 and
therefore needs ``--trust-program``; ``--expect-digest`` (printed by ``recsys-export``) refuses to start
on an export that is not the one exported. Limits: see ``--help`` and docs/serving.md (Security).
"""

from __future__ import annotations

import argparse
import sys

from serving.app import BODY_TIMEOUT_S, MAX_BODY_BYTES
from serving.server import (
    DEFAULT_HEADER_TIMEOUT_S,
    DEFAULT_KEEP_ALIVE_S,
    DEFAULT_LIMIT_CONCURRENCY,
    DEFAULT_MAX_HEADER_BYTES,
    ServerLimits,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recsys-serve", description="Serve exported recommenders over HTTP."
    )
    parser.add_argument("export_dir", help="directory written by recsys-export (holds index.json)")
    parser.add_argument(
        "--tiers", default=None, help="YAML file 'tiers: {name: size}' (default: every size as d<size>)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--engine",
        choices=("python", "program"),
        default="python",
        help="python: recsys.nn backbone from safetensors; program: the torch.export program "
        "(unpickles program.pt2: needs --trust-program)",
    )
    parser.add_argument(
        "--trust-program",
        action="store_true",
        help="allow --engine program to unpickle program.pt2 (runs code from the export: only for "
        "exports you made or whose --expect-digest you checked)",
    )
    parser.add_argument(
        "--expect-digest",
        default=None,
        metavar="HEX",
        help="refuse to start unless the export's digest (printed by recsys-export) equals HEX",
    )
    parser.add_argument(
        "--ann",
        choices=("flat", "hnsw"),
        default=None,
        help="top-K through a faiss index per tier (needs faiss-cpu; default: exact scoring)",
    )
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 checks at startup")
    limits = parser.add_argument_group("request and connection limits")
    limits.add_argument(
        "--max-history",
        type=int,
        default=None,
        help="most item ids in one request's history (default: max(1000, max_len)); more: 422",
    )
    limits.add_argument(
        "--max-body-bytes",
        type=int,
        default=MAX_BODY_BYTES,
        help=f"largest request body (default {MAX_BODY_BYTES}); more: 413",
    )
    limits.add_argument(
        "--body-timeout",
        type=float,
        default=BODY_TIMEOUT_S,
        help=f"seconds for a request body to arrive (default {BODY_TIMEOUT_S:g}); slower: 408",
    )
    limits.add_argument(
        "--header-timeout",
        type=float,
        default=DEFAULT_HEADER_TIMEOUT_S,
        help=f"seconds for a request head to arrive (default {DEFAULT_HEADER_TIMEOUT_S:g}); "
        "slower: connection closed",
    )
    limits.add_argument(
        "--timeout-keep-alive",
        type=int,
        default=DEFAULT_KEEP_ALIVE_S,
        help=f"seconds an idle keep-alive connection is kept (default {DEFAULT_KEEP_ALIVE_S})",
    )
    limits.add_argument(
        "--limit-concurrency",
        type=int,
        default=DEFAULT_LIMIT_CONCURRENCY,
        help=f"connections/requests at once before uvicorn answers 503 (default "
        f"{DEFAULT_LIMIT_CONCURRENCY}; 0: no limit)",
    )
    limits.add_argument(
        "--max-header-bytes",
        type=int,
        default=DEFAULT_MAX_HEADER_BYTES,
        help=f"most bytes of an unfinished request head (default {DEFAULT_MAX_HEADER_BYTES}); more: 400",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.engine == "program" and not args.trust_program:
        raise SystemExit(
            "recsys-serve: --engine program loads program.pt2 with torch.export.load, which unpickles "
            "and can run code from the file; add --trust-program only for an export you made or "
            "whose digest you checked (--expect-digest)"
        )
    if args.expect_digest is not None and args.no_verify:
        raise SystemExit(
            "recsys-serve: --expect-digest needs the checksum verification that --no-verify skips"
        )

    from recsys.export.artifact import ArtifactError
    from serving.app import create_app
    from serving.server import run_server

    try:
        limits = ServerLimits(
            header_timeout=args.header_timeout,
            timeout_keep_alive=args.timeout_keep_alive,
            limit_concurrency=args.limit_concurrency or None,
            max_header_bytes=args.max_header_bytes,
        )
        app = create_app(
            args.export_dir,
            args.tiers,
            engine=args.engine,
            max_body_bytes=args.max_body_bytes,
            verify=not args.no_verify,
            ann=args.ann,
            trust_program=args.trust_program,
            expect_digest=args.expect_digest,
            max_history=args.max_history,
            body_timeout=args.body_timeout,
        )
    except (ArtifactError, ValueError, FileNotFoundError, ImportError) as err:
        raise SystemExit(f"recsys-serve: {err}") from None
    digest = app.state.tiers.digest
    print(
        f"recsys-serve: export digest (sha256) {digest}"
        if digest
        else "recsys-serve: checksums not verified",
        file=sys.stderr,
    )
    run_server(app, args.host, args.port, limits)


if __name__ == "__main__":
    main()
