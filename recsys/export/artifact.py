"""Serving artifacts: one standalone directory per embedding size d, loaded without unpickling.

Layout of ``EXPORT_DIR/d{d:04d}/`` (written by ``recsys-export``, see docs/serving.md)::

    config.json                  format, size d, num_items, max_len, the width-d ModelConfig (its
                                 backbone as ``_target_`` + fields)
    model.safetensors            the width-d backbone weights (the [:d] slice of the trained model)
    item_embeddings.safetensors  "item_embeddings": (N+1, d) precomputed catalog matrix, row 0 = padding
                                 (+ "input_embeddings": (N+1, D) backbone inputs, when wider than d)
    items.json                   {"item_ids": [...], "titles": [...]}: original item id (and title) of
                                 item_idx i+1 at index i; "titles" optional (absent in older exports or
                                 when the dataset has no text), same length, each at most 1000 chars
    program.pt2                  torch.export program: history (B, max_len) int64 -> scores (B, N+1)
    metrics.json                 validation/test metrics at size d, parameter count, file sizes
    checksums.json               sha256 of every other file

``EXPORT_DIR/index.json`` lists the sizes and their folders; ``EXPORT_DIR/checksums.json`` holds the
sha256 of index.json and of every size's checksums.json, so the whole export is pinned by it. The
**export digest** (:func:`export_digest`, printed by ``recsys-export``) is the sha256 of the sorted
``"<sha256>  <path>\n"`` lines of that root list (what ``sha256sum index.json d*/checksums.json |
LC_ALL=C sort -k2 | sha256sum`` prints); kept outside the export, it detects any change to it, checksums
included (``recsys-serve --expect-digest``).

``load_artifact`` reads safetensors and JSON only (no pickle); the backbone is rebuilt from
``recsys.nn`` (no torchrec, no training config), its config class looked up among the registered
ones by its ``_target_`` (nothing named in the file is imported). The program is loaded with
``torch.export.load``, which unpickles and can therefore run code from the file: only with
``trust_program=True``. Every path read from an export (index.json ``dir``, config.json ``program``,
checksums.json names) must be a plain name that resolves inside its folder; anything else raises
:class:`ArtifactError`.

:class:`InferenceModule` is the width-d inference model (history -> scores), the one both engines
run: ``Artifact.module()`` rebuilds it from the safetensors ("python" engine), and program.pt2 is
its ``torch.export`` ("program" engine).

A backbone whose weights are not nested (sasrec) is exported whole with its output cut to d: its
``model_config.backbone.ladder`` extends past ``model_config.ladder``, model.safetensors holds the
full-width weights, and the backbone reads the full-width ``input_embeddings`` while scoring uses
the (N+1, d) catalog.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from data_prep.io import sha256_file
from recsys.nn import BackboneConfig, backbone_config_from_dict, build_backbone
from recsys.scoring import score_items

FORMAT = "recsys-serving-artifact"
FORMAT_VERSION = 2  # 2: model_config.backbone is a config object (``_target_`` + fields)
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
ITEM_EMB_FILE = "item_embeddings.safetensors"
ITEM_EMB_KEY = "item_embeddings"
INPUT_EMB_KEY = "input_embeddings"
ITEMS_FILE = "items.json"
PROGRAM_FILE = "program.pt2"
METRICS_FILE = "metrics.json"
CHECKSUMS_FILE = "checksums.json"  # in every size folder, and at the export root
INDEX_FILE = "index.json"
CONFIG_FIELDS = ("size", "num_items", "max_len", "model_config")
MAX_TITLE_CHARS = 1000  # items.json: longest title accepted (the exporter writes at most 200)
_HEX64 = re.compile(r"[0-9a-f]{64}")


class ArtifactError(RuntimeError):
    """An artifact directory is missing a file, malformed, or fails its checksums."""


class UntrustedProgramError(ArtifactError):
    """The torch.export program was requested without ``trust_program=True``."""


def size_dir_name(d: int) -> str:
    return f"d{d:04d}"


def safe_path(folder: Path, name: Any, source: Path, what: str) -> Path:
    """``folder / name`` for a ``name`` read from the file ``source``; ArtifactError unless ``name`` is a
    plain file or folder name (no separator, not ``.``/``..``, not absolute) whose target, symlinks
    resolved, lies inside ``folder``."""
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or "\x00" in name
        or Path(name).is_absolute()
    ):
        raise ArtifactError(
            f"{source}: {what} {name!r} must be a plain name inside {folder} (no '/', '..' or absolute path)"
        )
    path = folder / name
    root, target = folder.resolve(), path.resolve()
    if target == root or not target.is_relative_to(root):
        raise ArtifactError(
            f"{source}: {what} {name!r} resolves to {target}, not inside {folder}; "
            "paths must stay inside the export folder"
        )
    return path


def write_checksums(directory: Path) -> dict[str, str]:
    """Write checksums.json: sha256 of every regular file of ``directory`` (itself excluded)."""
    sums = {
        p.name: sha256_file(p)
        for p in sorted(directory.iterdir())
        if p.is_file() and p.name != CHECKSUMS_FILE
    }
    (directory / CHECKSUMS_FILE).write_text(json.dumps(sums, indent=2, sort_keys=True))
    return sums


def _read_checksums(path: Path) -> dict[str, str]:
    sums = _read_json(path)
    if not isinstance(sums, dict) or not all(
        isinstance(v, str) and _HEX64.fullmatch(v) for v in sums.values()
    ):
        raise ArtifactError(f"{path}: expected a mapping of file name -> sha256 hex digest")
    return sums


def verify_checksums(directory: Path) -> None:
    """ArtifactError naming the file when one is missing, added or altered, or when a name in
    checksums.json or a file of ``directory`` points outside it."""
    path = directory / CHECKSUMS_FILE
    if not path.is_file():
        raise ArtifactError(f"{directory}: no {CHECKSUMS_FILE}; not an exported artifact")
    expected = _read_checksums(path)
    for name, digest in expected.items():
        target = safe_path(directory, name, path, "file")
        if not target.is_file():
            raise ArtifactError(f"{target}: listed in {CHECKSUMS_FILE} but missing")
        actual = sha256_file(target)
        if actual != digest:
            raise ArtifactError(
                f"checksum mismatch for {target}: expected sha256 {digest}, got {actual} (file altered or corrupt)"
            )
    extra = sorted(
        p.name
        for p in directory.iterdir()
        if p.is_file() and p.name not in expected and p.name != CHECKSUMS_FILE
    )
    if extra:
        raise ArtifactError(f"{directory}: files not covered by {CHECKSUMS_FILE}: {extra}")


def _check_inside(directory: Path) -> None:
    """ArtifactError when a file of ``directory`` is a symlink whose target lies outside it."""
    for p in sorted(directory.iterdir()):
        if p.is_symlink():
            safe_path(directory, p.name, directory, "file")


# ---------------------------------------------------------------------------- the export root
def digest_of(sums: dict[str, str]) -> str:
    """The export digest of a root checksum list: sha256 of its sorted ``"<sha256>  <path>\n"`` lines."""
    lines = "".join(f"{sums[p]}  {p}\n" for p in sorted(sums))
    return hashlib.sha256(lines.encode()).hexdigest()


def root_checksum_paths(index: dict[str, Any]) -> list[str]:
    """What the root checksums.json covers: index.json and each listed size's checksums.json."""
    dirs = sorted({index["entries"][str(size)]["dir"] for size in index["sizes"]})
    return [INDEX_FILE, *(f"{d}/{CHECKSUMS_FILE}" for d in dirs)]


def write_export_checksums(export_dir: str | Path) -> str:
    """Write EXPORT_DIR/checksums.json (sha256 of index.json and of every size's checksums.json);
    returns the export digest."""
    export_dir = Path(export_dir)
    index = read_index(export_dir)
    sums = {p: sha256_file(export_dir / p) for p in root_checksum_paths(index)}
    (export_dir / CHECKSUMS_FILE).write_text(json.dumps(sums, indent=2, sort_keys=True))
    return digest_of(sums)


def normalize_digest(digest: str) -> str:
    """A sha256 hex digest in lower case; ValueError for anything else."""
    text = str(digest).strip().lower()
    if not _HEX64.fullmatch(text):
        raise ValueError(f"expected digest must be 64 hex characters (a sha256), got {digest!r}")
    return text


def verify_export(export_dir: str | Path, expect_digest: str | None = None) -> str:
    """Check EXPORT_DIR/checksums.json against index.json and every size's checksums.json (which in
    turn cover each size's files, see :func:`verify_checksums`); returns the export digest.
    ``expect_digest``: a digest kept outside the export; ArtifactError when the export's differs."""
    export_dir = Path(export_dir)
    expected = None if expect_digest is None else normalize_digest(expect_digest)
    path = export_dir / CHECKSUMS_FILE
    if not path.is_file():
        raise ArtifactError(
            f"{export_dir}: no {CHECKSUMS_FILE} at the export root (it covers {INDEX_FILE}); "
            "re-export with this version of recsys-export, or skip verification"
        )
    sums = _read_checksums(path)
    digest = digest_of(sums)
    if expected is not None and digest != expected:
        raise ArtifactError(
            f"{export_dir}: export digest {digest} differs from the expected digest {expected}; "
            "the export is not the one you exported (or was modified)"
        )

    def check(rel: str, target: Path) -> None:
        if not target.is_file():
            raise ArtifactError(f"{target}: listed in {path} but missing")
        actual = sha256_file(target)
        if actual != sums[rel]:
            raise ArtifactError(
                f"checksum mismatch for {target}: expected sha256 {sums[rel]} (from {path}), "
                f"got {actual} (file altered or corrupt)"
            )

    if INDEX_FILE not in sums:
        raise ArtifactError(f"{path}: does not cover {INDEX_FILE}")
    check(INDEX_FILE, export_dir / INDEX_FILE)
    index = read_index(export_dir)  # structure, and every 'dir' a plain folder name inside the export
    wanted = root_checksum_paths(index)
    if set(sums) != set(wanted):
        raise ArtifactError(f"{path}: covers {sorted(sums)}, but {INDEX_FILE} needs exactly {sorted(wanted)}")
    for rel in wanted[1:]:
        folder, name = rel.split("/")
        check(rel, safe_path(export_dir, folder, export_dir / INDEX_FILE, "folder") / name)
    return digest


def export_digest(export_dir: str | Path) -> str:
    """The export digest, after checking the root checksums against the files."""
    return verify_export(export_dir)


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise ArtifactError(f"missing artifact file {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path}: invalid JSON ({err})") from None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_config(config: Any, path: Path) -> tuple[dict[str, Any], BackboneConfig]:
    """config.json's fields (ArtifactError naming the file for a missing or ill-typed one), its
    ``program`` a plain name, its model width equal to its size, and its backbone config (returned)
    a registered one that fits the model's ladder and max_len."""
    if not isinstance(config, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    if config.get("format") != FORMAT or config.get("version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: not a {FORMAT} v{FORMAT_VERSION} artifact (version "
            f"{config.get('version')!r}); re-export it with this version of recsys-export"
        )
    for key in CONFIG_FIELDS:
        if key not in config:
            raise ArtifactError(f"{path}: missing field {key!r}")
    for key in ("size", "num_items", "max_len"):
        if not _is_int(config[key]) or config[key] < 1:
            raise ArtifactError(f"{path}: field {key!r} must be a positive integer, got {config[key]!r}")
    model = config["model_config"]
    ladder = model.get("ladder") if isinstance(model, dict) else None
    if not isinstance(ladder, list) or not ladder or not all(_is_int(x) for x in ladder):
        raise ArtifactError(f"{path}: field 'model_config' must hold a 'ladder' list of integer sizes")
    if ladder[-1] != config["size"]:
        raise ArtifactError(
            f"{path}: model_config.ladder[-1] = {ladder[-1]!r} does not match size {config['size']}"
        )
    try:
        backbone = backbone_config_from_dict(model.get("backbone"))
    except (ValueError, TypeError) as err:
        raise ArtifactError(f"{path}: model_config.backbone: {err}") from None
    if list(backbone.ladder or ())[: len(ladder)] != ladder or backbone.max_len != config["max_len"]:
        raise ArtifactError(
            f"{path}: model_config.backbone (ladder {backbone.ladder}, max_len {backbone.max_len}) "
            f"does not fit model_config.ladder {ladder} and max_len {config['max_len']}"
        )
    safe_path(path.parent, config.get("program", PROGRAM_FILE), path, "field 'program'")
    return config, backbone


class InferenceModule(torch.nn.Module):
    """The width-d inference model: history (B, L) int64, left-padded with 0 -> scores (B, N+1),
    padding column -inf.

    item ids -> rows of the backbone's inputs -> backbone -> last position -> score_items at size d
    against the (N+1, d) catalog. ``input_embeddings`` (N+1, D): the backbone's inputs when wider
    than the catalog (a backbone whose output is cut to d); None: the catalog itself.
    """

    def __init__(
        self,
        backbone: torch.nn.Module,
        item_embeddings: torch.Tensor,
        input_embeddings: torch.Tensor | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("item_embeddings", item_embeddings.detach().clone().contiguous())
        self.separate_inputs = input_embeddings is not None
        if self.separate_inputs:
            self.register_buffer("input_embeddings", input_embeddings.detach().clone().contiguous())

    def encode(self, history: torch.Tensor) -> torch.Tensor:
        """history (B, L) -> (B, d) hidden state of the last position."""
        x = (self.input_embeddings if self.separate_inputs else self.item_embeddings)[history]  # (B, L, D)
        return self.backbone.forward_last(x, history != 0)  # only what the last position needs

    def forward(self, history: torch.Tensor) -> torch.Tensor:
        """history (B, L) -> (B, N+1) scores."""
        return score_items(self.encode(history), self.item_embeddings, (self.item_embeddings.shape[1],))[0]


@dataclass
class Artifact:
    """A loaded width-d serving artifact (weights, catalog matrix, id mapping, metadata)."""

    directory: Path
    size: int
    config: dict[str, Any]
    backbone_config: BackboneConfig
    state: dict[str, torch.Tensor]
    item_embeddings: torch.Tensor  # (N+1, d), row 0 = padding
    item_ids: list[str]  # index i -> original id of item_idx i+1
    metrics: dict[str, Any]
    input_embeddings: torch.Tensor | None = None  # (N+1, D) backbone inputs; None: the catalog matrix
    titles: list[str] | None = None  # index i -> title of item_idx i+1 ("" unknown); None: no titles
    trust_program: bool = False  # allow program(), which unpickles program.pt2
    _module: InferenceModule | None = field(default=None, repr=False)
    _program: torch.nn.Module | None = field(default=None, repr=False)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def max_len(self) -> int:
        return int(self.config["max_len"])

    @property
    def num_parameters(self) -> int:
        """Parameters of the width-d backbone (one whose output is cut: all of it), excluding the
        precomputed catalog and input matrices."""
        return int(sum(t.numel() for t in self.state.values()))

    def module(self) -> InferenceModule:
        """The inference model rebuilt from recsys.nn and the safetensors weights (eval mode): the
        backbone of ``backbone_config``, its output cut to size d."""
        if self._module is None:
            backbone = build_backbone(self.backbone_config, self.size)
            try:
                backbone.load_state_dict(self.state, strict=True)
            except RuntimeError as err:
                raise ArtifactError(
                    f"{self.directory / WEIGHTS_FILE}: weights do not fit the config: {err}"
                ) from None
            self._module = InferenceModule(backbone, self.item_embeddings, self.input_embeddings).eval()
        return self._module

    def program(self) -> torch.nn.Module:
        """The serialized inference program (torch.export), history (B, max_len) -> scores (B, N+1).

        ``torch.export.load`` unpickles, so a crafted file runs code: refused unless the artifact was
        loaded with ``trust_program=True`` (:class:`UntrustedProgramError`)."""
        if self._program is None:
            if not self.trust_program:
                raise UntrustedProgramError(
                    f"{self.directory}: refusing to load {self.config.get('program', PROGRAM_FILE)}: "
                    "torch.export.load unpickles and can run code from the file; pass trust_program=True "
                    "(recsys-serve --trust-program) only for an export you made or whose digest you checked"
                )
            name = self.config.get("program", PROGRAM_FILE)
            path = safe_path(self.directory, name, self.directory / CONFIG_FILE, "field 'program'")
            if not path.is_file():
                raise ArtifactError(f"missing artifact file {path}")
            self._program = torch.export.load(str(path)).module()
        return self._program

    @torch.inference_mode()
    def encode(self, history: torch.Tensor) -> torch.Tensor:
        """history (B, max_len) item_idx, left-padded -> (B, d) last hidden state (python engine)."""
        return self.module().encode(history)

    @torch.inference_mode()
    def scores(self, history: torch.Tensor, engine: str = "python") -> torch.Tensor:
        """history (B, max_len) item_idx, left-padded -> (B, N+1) scores, column 0 = -inf, through the
        python engine (:meth:`module`) or the program (:meth:`program`)."""
        if engine not in ("python", "program"):
            raise ValueError(f"engine must be 'python' or 'program', got {engine!r}")
        return (self.module() if engine == "python" else self.program())(history)


def _read_items(path: Path) -> tuple[list[str], list[str] | None]:
    """items.json -> (item ids, titles or None when the file has no ``titles``); ArtifactError naming
    the file when ``item_ids`` is not a list of string or integer ids, or ``titles`` not a list of
    strings (each at most ``MAX_TITLE_CHARS``) as long as ``item_ids``."""
    data = _read_json(path)
    ids = data.get("item_ids") if isinstance(data, dict) else None
    if not isinstance(ids, list) or not all(
        isinstance(x, (str, int)) and not isinstance(x, bool) for x in ids
    ):
        raise ArtifactError(f'{path}: expected {{"item_ids": [id, ...]}} with string or integer ids')
    if "titles" not in data:
        return [str(x) for x in ids], None
    titles = data["titles"]
    if not isinstance(titles, list) or not all(isinstance(t, str) for t in titles):
        raise ArtifactError(f"{path}: 'titles' must be a list of strings, one per item id")
    if len(titles) != len(ids):
        raise ArtifactError(f"{path}: {len(titles)} titles for {len(ids)} item ids; expected one per item id")
    longest = max((len(t) for t in titles), default=0)
    if longest > MAX_TITLE_CHARS:
        raise ArtifactError(f"{path}: a title has {longest} characters, more than {MAX_TITLE_CHARS}")
    return [str(x) for x in ids], titles


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types for a malformed header
        raise ArtifactError(f"{path}: not a readable safetensors file ({err})") from None


def load_artifact(directory: str | Path, verify: bool = True, trust_program: bool = False) -> Artifact:
    """Load one size directory (``EXPORT_DIR/d0064``); ``verify`` checks every sha256 first.

    Reads safetensors and JSON only. ``trust_program``: allow :meth:`Artifact.program`, which
    unpickles program.pt2 (see the module docstring); leave it False for exports you did not make."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"artifact directory not found: {directory}")
    _check_inside(directory)
    if verify:
        verify_checksums(directory)
    config, backbone_config = check_config(_read_json(directory / CONFIG_FILE), directory / CONFIG_FILE)
    for name in (WEIGHTS_FILE, ITEM_EMB_FILE):
        if not (directory / name).is_file():
            raise ArtifactError(f"missing artifact file {directory / name}")
    state = _load_tensors(directory / WEIGHTS_FILE)
    emb = _load_tensors(directory / ITEM_EMB_FILE)
    if ITEM_EMB_KEY not in emb:
        raise ArtifactError(f"{directory / ITEM_EMB_FILE}: no '{ITEM_EMB_KEY}' tensor")
    item_embeddings = emb[ITEM_EMB_KEY].float()
    item_ids, titles = _read_items(directory / ITEMS_FILE)
    size, num_items = config["size"], config["num_items"]
    if item_embeddings.shape != (num_items + 1, size) or len(item_ids) != num_items:
        raise ArtifactError(
            f"{directory}: item_embeddings {tuple(item_embeddings.shape)} / {len(item_ids)} item ids do not "
            f"match num_items={num_items}, size={size}"
        )
    inputs = emb[INPUT_EMB_KEY].float() if INPUT_EMB_KEY in emb else None
    width = backbone_config.width  # what the backbone reads
    if (inputs is None) != (width == size):
        raise ArtifactError(
            f"{directory / ITEM_EMB_FILE}: a backbone of width {width} at size {size} needs "
            f"'{INPUT_EMB_KEY}' exactly when its width exceeds the size"
        )
    if inputs is not None:
        if inputs.shape != (num_items + 1, width):
            raise ArtifactError(
                f"{directory}: input_embeddings {tuple(inputs.shape)} do not match "
                f"num_items={num_items}, width={width}"
            )
    metrics_path = directory / METRICS_FILE
    metrics = _read_json(metrics_path) if metrics_path.is_file() else {}
    return Artifact(
        directory,
        size,
        config,
        backbone_config,
        state,
        item_embeddings,
        item_ids,
        metrics,
        inputs,
        titles=titles,
        trust_program=trust_program,
    )


def check_index(index: Any, path: Path) -> dict[str, Any]:
    """index.json's structure: ``sizes`` (positive integers) and an ``entries`` object with, for every
    size, a ``dir`` that is a plain folder name inside the export; ArtifactError naming the file."""
    if not isinstance(index, dict):
        raise ArtifactError(f"{path}: expected a JSON object")
    if index.get("format", FORMAT) != FORMAT:
        raise ArtifactError(f"{path}: not a {FORMAT} index")
    sizes, entries = index.get("sizes"), index.get("entries")
    if not isinstance(sizes, list) or not sizes or not all(_is_int(s) and s > 0 for s in sizes):
        raise ArtifactError(f"{path}: 'sizes' must be a non-empty list of positive integers, got {sizes!r}")
    if not isinstance(entries, dict):
        raise ArtifactError(f"{path}: 'entries' must be an object mapping each size to its folder")
    for size in sizes:
        entry = entries.get(str(size))
        if not isinstance(entry, dict) or "dir" not in entry:
            raise ArtifactError(f"{path}: no entry with a 'dir' for size {size}")
        safe_path(path.parent, entry["dir"], path, f"size {size}: 'dir'")
    return index


def read_index(export_dir: str | Path) -> dict[str, Any]:
    """The export's index.json (every size with metrics, parameters and bytes), structure checked;
    :func:`verify_export` checks it against the root checksums."""
    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise ArtifactError(f"export directory not found: {export_dir}")
    return check_index(_read_json(export_dir / INDEX_FILE), export_dir / INDEX_FILE)
