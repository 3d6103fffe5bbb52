"""data_prep: raw files -> a processed dataset (the bottom layer: it imports neither recsys nor serving).

Public API, the only parts other packages use:

* :mod:`data_prep.layout` - the file layout of a processed dataset directory;
* :mod:`data_prep.io` - atomic writes and sha256, shared by every layer;
* :func:`prepare_builtin` - prepare a built-in dataset (what ``recsys-prep ml-100k`` does).

Everything else (readers, pipeline, encoders, the ``recsys-prep`` CLI) is reached through
``recsys-prep`` or these.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["prepare_builtin"]


def prepare_builtin(
    name: str,
    out: str | Path,
    text_encoder: str = "minilm",
    image_encoder: str | None = None,
    k_core: int | None = None,
) -> Path:
    """Prepare the built-in dataset ``name`` (``ml-100k`` or ``ml-1m``) into ``out`` with the default
    filtering (or ``k_core``: 0 keeps every rating) and feature tables, exactly as
    ``recsys-prep NAME --out OUT [--k-core K]`` does; returns ``out``.

    Raises ``ValueError`` for an unknown name and ``data_prep.errors.DataError`` for bad input: a
    failure is an exception, never an ignored exit status.
    """
    from data_prep.builtin import BUILTINS
    from data_prep.cli import prepare_from_args

    if name not in BUILTINS:
        raise ValueError(f"unknown built-in dataset '{name}'; built in: {', '.join(sorted(BUILTINS))}")
    argv = [name, "--out", str(out), "--text-encoder", text_encoder]
    if image_encoder:
        argv += ["--image-encoder", image_encoder]
    if k_core is not None:
        argv += ["--k-core", str(k_core)]
    return prepare_from_args(argv)
