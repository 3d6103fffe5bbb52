"""recsys-export: layout, index, parity (python loader and torch.export program), parameter
count, standalone program loading, checksum tampering, CLI, item titles in items.json."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys

import polars as pl
import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file
from support import trained_export, write_processed_dataset

from recsys.builders import build_dataset, build_model
from recsys.data import SequenceDataset
from recsys.export.artifact import ArtifactError, load_artifact, write_checksums
from recsys.export.exporter import ParityError, _topk_matches, export_run, item_title, item_titles, main
from recsys.nn import build_backbone
from recsys.training.checkpoint import load_checkpoint
from serving.recommender import Recommender

SIZES = (4, 8, 16)
FILES = {
    "config.json",
    "model.safetensors",
    "item_embeddings.safetensors",
    "items.json",
    "program.pt2",
    "metrics.json",
    "README.md",  # the model card (tests/recsys/test_model_card.py)
    "checksums.json",
}


@pytest.fixture(scope="module")
def exported():
    return trained_export()


def load_trained(run_dir):
    """(dataset, model in eval mode with the run's best checkpoint)."""
    cfg = OmegaConf.load(run_dir / "config.yaml")
    dataset = build_dataset(cfg)
    model = build_model(cfg, dataset)
    model.load_state_dict(load_checkpoint(run_dir / "checkpoints" / "best.pt")["model"])
    return dataset, model.eval()


def assert_artifacts_match_the_model(export_dir, model, inputs, engine, label):
    """Every size's artifact gives the trained model's size-d scores and top-10/50; returns the
    (size, Recommender, reference scores) triples for further checks."""
    with torch.no_grad():
        ref_all = model.score(inputs)
    out = []
    for j, d in enumerate(SIZES):
        rec = Recommender(
            load_artifact(export_dir / f"d{d:04d}", trust_program=engine == "program"), engine=engine
        )
        got = rec.scores(inputs)
        ref = ref_all[j]
        assert got.shape == ref.shape == (len(inputs), 61)
        assert torch.isinf(got[:, 0]).all()
        torch.testing.assert_close(got[:, 1:], ref[:, 1:], rtol=1e-4, atol=1e-4)
        for k in (10, 50):
            _topk_matches(ref, got, k, f"{label} d{d} {engine}")  # raises ParityError on mismatch
        out.append((d, rec, ref))
    return out


@pytest.fixture(scope="module")
def trained(exported):
    return load_trained(exported[0])


def test_layout_and_index(exported):
    run_dir, export_dir, index = exported
    assert json.loads((export_dir / "index.json").read_text()) == index
    assert index["sizes"] == list(SIZES) and index["num_items"] == 60 and index["max_len"] == 10
    run_metrics = json.loads((run_dir / "metrics.json").read_text())
    for d in SIZES:
        entry = index["entries"][str(d)]
        directory = export_dir / f"d{d:04d}"
        assert entry["dir"] == directory.name
        assert {p.name for p in directory.iterdir()} == FILES
        assert entry["bytes"] == sum(p.stat().st_size for p in directory.iterdir())
        assert entry["metrics"]["test"]["ndcg@10"] == run_metrics["test"][str(d)]["ndcg@10"]
        assert entry["metrics"]["test"]["recall@10"] == run_metrics["test"][str(d)]["recall@10"]
        metrics = json.loads((directory / "metrics.json").read_text())
        assert metrics["validation"] == run_metrics["validation"][str(d)]
        assert metrics["parameters"] == entry["parameters"]
        assert metrics["catalog_parameters"] == 61 * d
        config = json.loads((directory / "config.json").read_text())
        assert config["size"] == d and config["model_config"]["ladder"][-1] == d
        assert "data" not in config and "trainer" not in config  # no training config tree
        items = json.loads((directory / "items.json").read_text())
        assert items["item_ids"] == [f"i{i}" for i in range(1, 61)]
        assert items["titles"] == [f"item {i}" for i in range(1, 61)]  # the dataset's text, in item_idx order
        emb = load_file(str(directory / "item_embeddings.safetensors"))["item_embeddings"]
        assert emb.shape == (61, d) and torch.all(emb[0] == 0)
        weights = load_file(str(directory / "model.safetensors"))
        assert not any(k.startswith(("tables", "projector")) for k in weights)  # backbone only


def test_parameter_count_equals_a_model_built_at_width_d(exported):
    _, export_dir, index = exported
    for d in SIZES:
        artifact = load_artifact(export_dir / f"d{d:04d}")
        fresh = build_backbone(artifact.backbone_config, d)
        assert artifact.backbone_config.ladder == SIZES[: SIZES.index(d) + 1]  # a width-d backbone
        assert artifact.num_parameters == sum(p.numel() for p in fresh.parameters())
        assert index["entries"][str(d)]["parameters"] == artifact.num_parameters
        shapes = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
        assert shapes == {k: tuple(v.shape) for k, v in artifact.state.items()}


@pytest.mark.parametrize("engine", ["python", "program"])
def test_parity_with_the_trained_model_at_every_size(exported, trained, engine):
    dataset, model = trained
    assert_artifacts_match_the_model(exported[1], model, dataset.split("test").inputs, engine, "lru")


def test_the_exporter_does_not_import_serving():
    """serving imports recsys, never the other way: parity loads artifacts with recsys.export."""
    import ast
    from pathlib import Path

    import recsys.export

    for path in sorted(Path(recsys.export.__file__).parent.glob("*.py")):
        tree = ast.parse(path.read_text())
        modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        modules |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m for m in modules if m and m.split(".")[0] == "serving"}, path


def test_parity_check_detects_a_wrong_ranking():
    ref = torch.tensor([[float("-inf"), 3.0, 2.0, 1.0, 0.0]])
    with pytest.raises(ParityError):
        _topk_matches(ref, ref.flip(1).roll(1, 1), 2, "flipped")
    _topk_matches(ref, ref.clone(), 2, "same")


def test_program_loads_and_runs_without_the_recsys_package(exported, tmp_path):
    _, export_dir, _ = exported
    directory = export_dir / "d0008"
    history = torch.tensor([[0, 0, 0, 0, 0, 1, 2, 3, 4, 5], [7, 8, 9, 10, 11, 12, 13, 14, 15, 16]])
    expected = Recommender(load_artifact(directory), engine="python").scores(history)
    script = (
        "import sys, json\n"
        "for name in ('recsys', 'serving', 'data_prep', 'torchrec'):\n"
        "    sys.modules[name] = None  # any import of them fails\n"
        "import torch\n"
        f"m = torch.export.load({str(directory / 'program.pt2')!r}).module()\n"
        f"h = torch.tensor({history.tolist()})\n"
        "print(json.dumps(m(h)[:, 1:].tolist()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = torch.tensor(json.loads(out.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(got, expected[:, 1:], rtol=1e-5, atol=1e-5)


def test_checksum_tampering_is_detected(exported, tmp_path):
    _, export_dir, _ = exported
    copy = tmp_path / "d0004"
    shutil.copytree(export_dir / "d0004", copy)
    load_artifact(copy)
    emb = copy / "item_embeddings.safetensors"
    original = emb.read_bytes()
    data = bytearray(original)
    data[-1] ^= 0xFF
    emb.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="item_embeddings.safetensors"):
        load_artifact(copy)
    load_artifact(copy, verify=False)  # opting out still loads
    emb.write_bytes(original)
    (copy / "items.json").unlink()
    with pytest.raises(ArtifactError, match="items.json"):
        load_artifact(copy)


def test_cli_with_checkpoint_path_and_size_subset(exported, tmp_path, capsys):
    run_dir, _, _ = exported
    out = tmp_path / "exp"
    main(
        [str(run_dir / "checkpoints" / "last.pt"), "--sizes", "4", "--out", str(out), "--parity-users", "16"]
    )
    index = json.loads((out / "index.json").read_text())
    assert index["sizes"] == [4] and index["source"]["checkpoint"].endswith("last.pt")
    assert {p.name for p in out.iterdir()} == {
        "d0004",
        "index.json",
        "checksums.json",
    }  # no staging leftovers
    assert "written" in capsys.readouterr().out


def sha256_hex(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_cli_prints_the_export_digest_over_root_checksums(exported, tmp_path, capsys):
    """checksums.json at the export root covers index.json and every size's checksums.json; the
    digest recsys-export prints is sha256 over the sorted "<sha256>  <path>" lines of that list."""
    run_dir, _, _ = exported
    out = tmp_path / "exp"
    main([str(run_dir), "--sizes", "4,8", "--out", str(out), "--parity-users", "16"])
    printed = capsys.readouterr().out
    root = json.loads((out / "checksums.json").read_text())
    assert root == {
        p: sha256_hex(out / p) for p in ("index.json", "d0004/checksums.json", "d0008/checksums.json")
    }
    lines = "".join(f"{root[p]}  {p}\n" for p in sorted(root))
    digest = hashlib.sha256(lines.encode()).hexdigest()
    assert f"digest (sha256): {digest}" in printed
    assert f"--expect-digest {digest}" in printed


def test_exported_files_share_one_mode_that_respects_the_umask(exported, tmp_path):
    """Every exported file (safetensors included) gets the mode a normal file gets: 0666 & ~umask."""
    run_dir, export_dir, _ = exported
    modes = {
        p.relative_to(export_dir): stat.S_IMODE(p.stat().st_mode)
        for p in export_dir.rglob("*")
        if p.is_file()
    }
    probe = tmp_path / "probe"
    probe.write_text("")
    assert set(modes.values()) == {stat.S_IMODE(probe.stat().st_mode)}, modes
    old = os.umask(0o027)
    try:
        main([str(run_dir), "--sizes", "4", "--out", str(tmp_path / "exp"), "--parity-users", "16"])
    finally:
        os.umask(old)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "exp").rglob("*") if p.is_file()}
    assert set(modes.values()) == {0o640}, modes


def test_cli_rejects_sizes_outside_the_ladder(exported, tmp_path):
    run_dir, _, _ = exported
    with pytest.raises(SystemExit, match="not in the trained ladder"):
        main([str(run_dir), "--sizes", "4,12", "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="neither a run directory"):
        main([str(tmp_path / "nowhere")])


def test_export_run_fails_loudly_when_parity_breaks(exported, tmp_path, monkeypatch):
    import recsys.export.exporter as export

    run_dir, _, _ = exported

    def broken(module, max_len, path):  # a program with perturbed catalog rows
        module.item_embeddings[1:] = torch.randn_like(module.item_embeddings[1:])
        original(module, max_len, path)

    original = export.export_program
    monkeypatch.setattr(export, "export_program", broken)
    with pytest.raises(ParityError, match="program path"):
        export_run(run_dir, sizes="4", out=tmp_path / "bad", parity_users=16)
    assert not (tmp_path / "bad" / "d0004").exists()


# ---------------------------------------------------------------------------- sasrec (not nested)
@pytest.fixture(scope="module")
def sasrec_exported():
    return trained_export("backbone=sasrec", "backbone.num_blocks=1", "backbone.heads=2")


def test_sasrec_export_holds_the_full_width_backbone_and_a_width_d_catalog(sasrec_exported):
    run_dir, export_dir, index = sasrec_exported
    assert index["sizes"] == list(SIZES)
    cfg = OmegaConf.load(run_dir / "config.yaml")
    full = build_model(cfg, build_dataset(cfg)).backbone
    full_count = sum(p.numel() for p in full.parameters())
    for d in SIZES:
        directory = export_dir / f"d{d:04d}"
        assert {p.name for p in directory.iterdir()} == FILES
        config = json.loads((directory / "config.json").read_text())
        assert config["size"] == d and config["model_config"]["ladder"] == list(SIZES[: SIZES.index(d) + 1])
        backbone = config["model_config"]["backbone"]
        assert backbone["_target_"] == "recsys.nn.sasrec.SASRecConfig" and backbone["ladder"] == [4, 8, 16]
        metrics = json.loads((directory / "metrics.json").read_text())
        assert metrics["parameters"] == full_count
        assert metrics["catalog_parameters"] == 61 * d
        artifact = load_artifact(directory)
        assert artifact.item_embeddings.shape == (61, d) and artifact.num_parameters == full_count
        assert index["entries"][str(d)]["parameters"] == full_count
        if d == 16:  # the full width: the catalog is the backbone's input
            assert artifact.input_embeddings is None and "input_embedding_parameters" not in metrics
            continue
        assert metrics["input_embedding_parameters"] == 61 * 16 and artifact.input_embeddings.shape == (
            61,
            16,
        )
        torch.testing.assert_close(artifact.item_embeddings, artifact.input_embeddings[:, :d])


@pytest.mark.parametrize("engine", ["python", "program"])
def test_sasrec_parity_with_the_trained_model_at_every_size(sasrec_exported, engine):
    run_dir, export_dir, _ = sasrec_exported
    dataset, model = load_trained(run_dir)
    inputs = dataset.split("test").inputs
    for _, rec, ref in assert_artifacts_match_the_model(export_dir, model, inputs, engine, "sasrec"):
        # request path: original ids in, the trained model's size-d top-K out
        history = [f"i{i}" for i in inputs[0][inputs[0] > 0].tolist()]
        top = rec.recommend(history, k=5, exclude_seen=False)
        expected = torch.topk(ref[0], 5).indices.tolist()
        assert [item for item, _ in top] == [f"i{i}" for i in expected]


def test_sasrec_program_runs_standalone(sasrec_exported):
    _, export_dir, _ = sasrec_exported
    artifact = load_artifact(export_dir / "d0008")
    program = torch.export.load(str(export_dir / "d0008" / "program.pt2")).module()
    history = torch.tensor(
        [[0, 0, 0, 0, 0, 1, 2, 3, 4, 5], [7, 8, 9, 10, 11, 12, 13, 14, 15, 16], [0] * 9 + [3]]
    )
    got = program(history)
    assert got.shape == (3, 61) and torch.isinf(got[:, 0]).all()
    expected = Recommender(artifact, engine="python").scores(history)
    torch.testing.assert_close(got[:, 1:], expected[:, 1:], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------- titles (items.json)
def test_artifact_exposes_the_titles(exported):
    artifact = load_artifact(exported[1] / "d0008")
    assert (
        artifact.titles == [f"item {i}" for i in range(1, 61)] and len(artifact.titles) == artifact.num_items
    )


def test_item_title_is_the_first_line_stripped_and_cut():
    assert item_title("  Star Wars \nA long time ago") == "Star Wars"
    assert item_title("x" * 500) == "x" * 200
    assert item_title(None) == "" and item_title("") == "" and item_title("\nsecond line") == ""


def test_titles_follow_item_idx_and_need_a_text_column(tmp_path):
    directory = write_processed_dataset(tmp_path / "data", n_items=12)
    items = pl.read_parquet(directory / "items.parquet")
    texts = [None if i == 3 else f" Title {i}\nmore" for i in range(1, 13)]
    items.with_columns(pl.Series("text", texts, dtype=pl.String)).reverse().write_parquet(
        directory / "items.parquet"
    )  # rows out of item_idx order, one text missing
    dataset = SequenceDataset(directory, max_len=10)
    assert item_titles(dataset) == ["" if i == 3 else f"Title {i}" for i in range(1, 13)]
    items.with_columns(pl.Series("text", [""] * 12, dtype=pl.String)).write_parquet(
        directory / "items.parquet"
    )
    assert item_titles(SequenceDataset(directory, max_len=10)) is None  # no text at all: no titles
    items.drop("text").write_parquet(directory / "items.parquet")
    assert item_titles(SequenceDataset(directory, max_len=10)) is None


def rewrite_items(folder, data) -> None:
    (folder / "items.json").write_text(json.dumps(data))
    write_checksums(folder)  # sealed again: only the loader's own checks stand in the way


def test_export_without_titles_still_loads(exported, tmp_path):
    copy = tmp_path / "d0004"
    shutil.copytree(exported[1] / "d0004", copy)
    rewrite_items(copy, {"item_ids": [f"i{i}" for i in range(1, 61)]})
    artifact = load_artifact(copy)
    assert artifact.titles is None and artifact.item_ids[0] == "i1"


@pytest.mark.parametrize(
    ("titles", "needle"),
    [
        ("item 1", "'titles' must be a list of strings"),
        (None, "'titles' must be a list of strings"),
        ([1] * 60, "'titles' must be a list of strings"),
        ([None] * 60, "'titles' must be a list of strings"),
        ([["x"]] * 60, "'titles' must be a list of strings"),
        (["x"] * 59, "59 titles for 60 item ids"),
        (["x"] * 61, "61 titles for 60 item ids"),
        (["x"] * 59 + ["y" * 1001], "a title has 1001 characters, more than 1000"),
    ],
)
def test_a_bad_titles_list_is_refused_naming_items_json(exported, tmp_path, titles, needle):
    copy = tmp_path / "d0004"
    shutil.copytree(exported[1] / "d0004", copy)
    rewrite_items(copy, {"item_ids": [f"i{i}" for i in range(1, 61)], "titles": titles})
    with pytest.raises(ArtifactError, match="items.json") as err:
        load_artifact(copy)
    assert needle in str(err.value)
    rewrite_items(copy, {"item_ids": [f"i{i}" for i in range(1, 61)], "titles": ["y" * 1000] * 60})
    assert load_artifact(copy).titles[0] == "y" * 1000  # at the bound: accepted
