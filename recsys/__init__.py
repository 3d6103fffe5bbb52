"""Nested ("Matryoshka") sequential recommendation: one training run, a model at every width.

The Python API mirrors the commands (docs/api.md)::

    import recsys

    run = recsys.train(["experiment=tiny", "data=generic"])  # recsys-train ...  -> recsys.Run
    run = recsys.load_run("runs/tiny/2026-01-01_12-00-00")   # a finished run (best checkpoint)
    run.evaluate("test")                                     # recsys-eval: {size: {metric: value}}
    run.model.slice(64)                                      # the width-64 model
    run.export()                                             # recsys-export -> export directory

and serving an export is ``from serving import load`` (serving builds on recsys, not the reverse).
The names below are imported on first use (:mod:`recsys.api`), so ``import recsys`` loads no torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from recsys.api import Run, compose_config, load_run, train

__all__ = ["Run", "compose_config", "load_run", "train"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from recsys import api

        return getattr(api, name)
    raise AttributeError(f"module 'recsys' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
