"""``recsys-serve EXPORT_DIR [--tiers FILE] [--host 127.0.0.1] [--port 8000] [--engine python|program] [--ann flat|hnsw]``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="recsys-serve", description="Serve exported recommenders over HTTP.")
    parser.add_argument("export_dir", help="directory written by recsys-export (holds index.json)")
    parser.add_argument("--tiers", default=None, help="YAML file 'tiers: {name: size}' (default: every size as d<size>)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--engine", choices=("python", "program"), default="python",
                        help="python: recsys.nn backbone from safetensors; program: the torch.export program")
    parser.add_argument("--ann", choices=("flat", "hnsw"), default=None,
                        help="top-K through a faiss index per tier (needs faiss-cpu; default: exact scoring)")
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 checks at startup")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    import uvicorn

    from serving.app import create_app
    from serving.artifact import ArtifactError

    try:
        app = create_app(args.export_dir, args.tiers, engine=args.engine, verify=not args.no_verify, ann=args.ann)
    except (ArtifactError, ValueError, FileNotFoundError, ImportError) as err:
        raise SystemExit(f"recsys-serve: {err}") from None
    uvicorn.run(app, host=args.host, port=args.port)


if __name__ == "__main__":
    main()
