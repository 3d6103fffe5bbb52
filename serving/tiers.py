"""Tiers: names mapped to exported sizes, so one process serves several sizes.

A tiers file is YAML::

    tiers:
      small: 32
      large: 256
    default: large        # optional; otherwise the largest size

Without a file every exported size is served under the name ``d<size>`` (e.g. ``d64``).

Loading an export (:class:`TierSet`) first checks the root checksums (index.json and every size's
checksums.json; ``expect_digest`` pins them to a digest kept outside the export), then each served
size's files, and that the folder index.json names for a size holds that size's model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from recsys.export.artifact import (
    INDEX_FILE,
    ArtifactError,
    load_artifact,
    normalize_digest,
    read_index,
    safe_path,
    verify_export,
)
from serving.recommender import Recommender, RequestError


def default_tiers(index: dict[str, Any]) -> dict[str, int]:
    """Every size of an export's index.json as a tier named ``d<size>``."""
    return {f"d{int(s)}": int(s) for s in index["sizes"]}


def parse_tiers(data: Any, source: str = "tiers") -> tuple[dict[str, int], str | None]:
    """(name -> size, default name or None) from the parsed YAML; ValueError on a malformed file."""
    if not isinstance(data, dict) or not isinstance(data.get("tiers"), dict) or not data["tiers"]:
        raise ValueError(f"{source}: expected a mapping 'tiers: {{name: size, ...}}'")
    tiers = {}
    for name, size in data["tiers"].items():
        if not isinstance(name, str) or not name or isinstance(size, bool) or not isinstance(size, int):
            raise ValueError(
                f"{source}: tier {name!r}: expected a name mapped to an integer size, got {size!r}"
            )
        tiers[name] = size
    default = data.get("default")
    if default is not None and default not in tiers:
        raise ValueError(f"{source}: default tier {default!r} is not one of {sorted(tiers)}")
    return tiers, default


def load_tiers_file(path: str | Path) -> tuple[dict[str, int], str | None]:
    """(name -> size, default) from a YAML tiers file; ValueError naming the file when it is missing,
    not UTF-8, not valid YAML or not of the expected shape."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"tiers file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a UTF-8 text file ({err})") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: invalid YAML: {err}") from None
    return parse_tiers(data, str(path))


class TierSet:
    """Every tier's :class:`Recommender`; tiers sharing a size share one loaded artifact.

    ``verify``: check the root and per-size checksums; ``expect_digest``: refuse an export whose
    digest differs (needs ``verify``); ``trust_program``: allow ``engine="program"``, which unpickles
    program.pt2; ``max_history``: the longest history a request may carry (None: ``max(1000, max_len)``)."""

    def __init__(
        self,
        export_dir: str | Path,
        tiers: dict[str, int] | str | Path | None = None,
        default: str | None = None,
        engine: str = "python",
        verify: bool = True,
        ann: str | None = None,
        *,
        trust_program: bool = False,
        expect_digest: str | None = None,
        max_history: int | None = None,
    ):
        self.export_dir = Path(export_dir)
        if expect_digest is not None:
            expect_digest = normalize_digest(expect_digest)
            if not verify:
                raise ValueError("expect_digest needs verification; it cannot be combined with verify=False")
        if engine == "program" and not trust_program:
            raise ArtifactError(
                f"{self.export_dir}: engine='program' loads program.pt2 with torch.export.load, which unpickles "
                "and can run code from the file; pass trust_program=True (recsys-serve --trust-program) only "
                "for an export you made or whose digest you checked"
            )
        self.digest = verify_export(self.export_dir, expect_digest) if verify else None
        self.index = read_index(self.export_dir)
        if isinstance(tiers, (str, Path)):
            tiers, default = load_tiers_file(tiers)
        elif isinstance(tiers, dict):
            tiers, default = parse_tiers({"tiers": tiers, "default": default})
        else:
            tiers = default_tiers(self.index)
        exported = {int(s) for s in self.index["sizes"]}
        missing = {n: s for n, s in tiers.items() if s not in exported}
        if missing:
            raise ArtifactError(
                f"tiers {missing} name sizes that were not exported; exported: {sorted(exported)}"
            )
        self.tiers = dict(tiers)
        self.default = default or max(self.tiers, key=lambda n: self.tiers[n])
        index_path = self.export_dir / INDEX_FILE
        by_size = {}
        for size in sorted(set(self.tiers.values())):
            name = self.index["entries"][str(size)]["dir"]
            folder = safe_path(self.export_dir, name, index_path, f"size {size}: 'dir'")
            artifact = load_artifact(folder, verify=verify, trust_program=trust_program)
            if artifact.size != size:
                raise ArtifactError(
                    f"{index_path}: the entry for size {size} points at folder {name!r}, whose "
                    f"config.json has size {artifact.size}; each size must name its own folder"
                )
            by_size[size] = Recommender(artifact, engine, ann, max_history=max_history)
        self.by_size = by_size

    def get(self, name: str | None) -> Recommender:
        name = self.default if name is None else name
        if name not in self.tiers:
            raise RequestError(
                f"unknown tier {name!r}; known tiers: {sorted(self.tiers)}",
                status_code=404,
                known_tiers=sorted(self.tiers),
            )
        return self.by_size[self.tiers[name]]

    def info(self) -> dict[str, Any]:
        entries = self.index["entries"]
        return {
            name: {"size": size, **{k: entries[str(size)].get(k) for k in ("metrics", "parameters", "bytes")}}
            for name, size in self.tiers.items()
        }
