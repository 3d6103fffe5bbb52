"""Tiers: names mapped to exported sizes, so one process serves several sizes.

A tiers file is YAML::

    tiers:
      small: 32
      large: 256
    default: large        # optional; otherwise the largest size

Without a file every exported size is served under the name ``d<size>`` (e.g. ``d64``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from serving.artifact import ArtifactError, load_artifact, read_index
from serving.recommender import Recommender, RequestError


def default_tiers(export_dir: str | Path) -> dict[str, int]:
    return {f"d{int(s)}": int(s) for s in read_index(export_dir)["sizes"]}


def parse_tiers(data: Any, source: str = "tiers") -> tuple[dict[str, int], str | None]:
    """(name -> size, default name or None) from the parsed YAML; ValueError on a malformed file."""
    if not isinstance(data, dict) or not isinstance(data.get("tiers"), dict) or not data["tiers"]:
        raise ValueError(f"{source}: expected a mapping 'tiers: {{name: size, ...}}'")
    tiers = {}
    for name, size in data["tiers"].items():
        if not isinstance(name, str) or not name or isinstance(size, bool) or not isinstance(size, int):
            raise ValueError(f"{source}: tier {name!r}: expected a name mapped to an integer size, got {size!r}")
        tiers[name] = size
    default = data.get("default")
    if default is not None and default not in tiers:
        raise ValueError(f"{source}: default tier {default!r} is not one of {sorted(tiers)}")
    return tiers, default


def load_tiers_file(path: str | Path) -> tuple[dict[str, int], str | None]:
    path = Path(path)
    return parse_tiers(yaml.safe_load(path.read_text()), str(path))


class TierSet:
    """Every tier's :class:`Recommender`; tiers sharing a size share one loaded artifact."""

    def __init__(
        self,
        export_dir: str | Path,
        tiers: dict[str, int] | str | Path | None = None,
        default: str | None = None,
        engine: str = "python",
        verify: bool = True,
        ann: str | None = None,
    ):
        self.export_dir = Path(export_dir)
        self.index = read_index(self.export_dir)
        if isinstance(tiers, (str, Path)):
            tiers, default = load_tiers_file(tiers)
        elif isinstance(tiers, dict):
            tiers, default = parse_tiers({"tiers": tiers, "default": default})
        else:
            tiers = default_tiers(self.export_dir)
        exported = {int(s) for s in self.index["sizes"]}
        missing = {n: s for n, s in tiers.items() if s not in exported}
        if missing:
            raise ArtifactError(f"tiers {missing} name sizes that were not exported; exported: {sorted(exported)}")
        self.tiers = dict(tiers)
        self.default = default or max(self.tiers, key=lambda n: self.tiers[n])
        by_size = {}
        for size in sorted(set(self.tiers.values())):
            by_size[size] = Recommender(load_artifact(self.export_dir / self.index["entries"][str(size)]["dir"],
                                                      verify=verify), engine, ann)
        self.by_size = by_size

    def get(self, name: str | None) -> Recommender:
        name = self.default if name is None else name
        if name not in self.tiers:
            raise RequestError(f"unknown tier {name!r}; known tiers: {sorted(self.tiers)}", status_code=404,
                               known_tiers=sorted(self.tiers))
        return self.by_size[self.tiers[name]]

    def info(self) -> dict[str, Any]:
        entries = self.index["entries"]
        return {
            name: {"size": size, **{k: entries[str(size)].get(k) for k in ("metrics", "parameters", "bytes")}}
            for name, size in self.tiers.items()
        }
