"""The model card (README.md) recsys-export writes in every size folder: its width, parameters, bytes,
metrics (both protocols, ratio to the largest size), latency, data counts and training summary; its
coverage by the checksums (an edited card fails loading; an export without cards still loads); and
the exporter's printed table listing the cards."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml
from support import trained_export

from data_prep.io import sha256_file
from recsys.export.artifact import (
    ArtifactError,
    load_artifact,
    verify_export,
    write_checksums,
    write_export_checksums,
)
from recsys.export.exporter import format_index, main

SIZES = (4, 8, 16)
NAMES = ("ndcg@10", "recall@10", "mrr@10", "unseen/ndcg@10", "unseen/recall@10", "unseen/mrr@10")


@pytest.fixture(scope="module")
def exported():
    return trained_export()


def read_card(directory) -> tuple[dict, str]:
    """(front matter, markdown body) of a size folder's README.md."""
    text = (directory / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def test_every_size_has_a_card_with_its_width_parameters_and_metrics(exported):
    run_dir, export_dir, index = exported
    run_metrics = json.loads((run_dir / "metrics.json").read_text())
    largest = run_metrics["test"][str(SIZES[-1])]
    for d in SIZES:
        directory = export_dir / f"d{d:04d}"
        front, body = read_card(directory)
        metrics = json.loads((directory / "metrics.json").read_text())
        artifact = load_artifact(directory)
        assert front["width"] == d and front["ladder"] == list(SIZES)
        assert front["parameters"] == metrics["parameters"] == artifact.num_parameters
        assert front["catalog_parameters"] == 61 * d
        assert f"the width-{d} model" in body and f"| width d | {d} (largest size of the run: 16) |" in body
        assert f"| parameters | {artifact.num_parameters:,} (backbone;" in body
        model_files = {
            p.name: p.stat().st_size
            for p in directory.iterdir()
            if p.name not in ("README.md", "checksums.json")
        }
        assert front["artifact_bytes"] == sum(model_files.values())
        assert f"| artifact size | {sum(model_files.values()):,} bytes" in body
        for name, size in model_files.items():
            assert f"| {name} | {size:,} |" in body
        # test metrics at this size, both protocols, and their ratio to the largest size
        test = run_metrics["test"][str(d)]
        (result,) = front["model-index"][0]["results"]
        assert {m["type"]: m["value"] for m in result["metrics"]} == {n: test[n] for n in NAMES}
        for name in NAMES:
            ratio = test[name] / largest[name]
            assert f"| `{name}` | {test[name]:.4f} | {ratio:.3f} |" in body, name
        # latency: measured by the exporter, recorded in metrics.json, index.json and the card
        latency = metrics["latency"]
        assert latency["runs"] == 20 and latency["batch_size"] == 1 and latency["device"] == "cpu"
        assert 0 < latency["min_ms"] <= latency["median_ms"] <= latency["max_ms"]
        assert index["entries"][str(d)]["latency_ms"] == latency["median_ms"]
        assert front["latency_ms_median"] == round(latency["median_ms"], 4)
        assert f"Median {latency['median_ms']:.3f} ms" in body
        # data: the manifest's counts (interactions counted from the sequences when it has none)
        assert "120 users, 60 items, " in body
        assert "`synthetic` (`data.name=generic`" in body
        # training config summary
        assert "| backbone | LRUConfig |" in body and "| ladder | [4, 8, 16]" in body
        assert "| epochs | at most 2 (best step" in body
        assert "| optimizer, lr | AdamW, 0.01 |" in body and "| seed | 42 |" in body
        # how to load it, and which tier it is for
        assert f'load("EXPORT_DIR", tiers={{"d{d}": {d}}})' in body
        assert "recsys-serve EXPORT_DIR --expect-digest DIGEST" in body
        assert front["tier"] == ("re-ranking" if d == 16 else "shortlist")
        assert f"Tier: **{front['tier']}**" in body
        assert index["entries"][str(d)]["card"] == f"d{d:04d}/README.md"


def test_interactions_come_from_the_sequences_when_the_manifest_has_none(exported):
    run_dir, export_dir, _ = exported
    from omegaconf import OmegaConf

    from recsys.builders import build_dataset

    dataset = build_dataset(OmegaConf.load(run_dir / "config.yaml"))
    interactions = sum(len(s) for s in dataset.sequences)
    _, body = read_card(export_dir / "d0004")
    assert f"120 users, 60 items, {interactions:,} interactions (from manifest.json + sequences)" in body


def test_the_card_is_covered_by_the_checksums(exported, tmp_path):
    from serving import load

    _, export_dir, _ = exported
    copy = tmp_path / "export"
    shutil.copytree(export_dir, copy)
    sums = json.loads((copy / "d0008" / "checksums.json").read_text())
    assert sums["README.md"] == sha256_file(copy / "d0008" / "README.md")
    load(copy)  # as exported: verifies
    card = copy / "d0008" / "README.md"
    original = card.read_text()
    card.write_text(original.replace("width: 8", "width: 16", 1))
    with pytest.raises(ArtifactError, match="README.md"):
        load_artifact(copy / "d0008")
    with pytest.raises(ArtifactError, match="README.md"):
        load(copy)
    load_artifact(copy / "d0008", verify=False)  # opting out still loads
    # re-sealing the folder's checksums does not help: the root checksums cover them
    write_checksums(copy / "d0008")
    load_artifact(copy / "d0008")
    with pytest.raises(ArtifactError, match="d0008/checksums.json"):
        verify_export(copy)
    with pytest.raises(ArtifactError, match="checksums.json"):
        load(copy)
    # a deleted card is missing, not silently dropped
    card.write_text(original)
    shutil.copy(export_dir / "d0008" / "checksums.json", copy / "d0008" / "checksums.json")
    load(copy)
    card.unlink()
    with pytest.raises(ArtifactError, match="README.md: listed in checksums.json but missing"):
        load_artifact(copy / "d0008")


def test_an_export_without_cards_still_loads(exported, tmp_path):
    """An export written before the cards (no README.md, no 'card' in index.json) loads and serves."""
    from serving import load

    _, export_dir, _ = exported
    old = tmp_path / "old"
    shutil.copytree(export_dir, old)
    index = json.loads((old / "index.json").read_text())
    for d in SIZES:
        folder = old / f"d{d:04d}"
        (folder / "README.md").unlink()
        write_checksums(folder)
        index["entries"][str(d)].pop("card")
        index["entries"][str(d)].pop("latency_ms")
    (old / "index.json").write_text(json.dumps(index, indent=2))
    write_export_checksums(old)
    for d in SIZES:
        assert load_artifact(old / f"d{d:04d}").size == d
    recs = load(old)
    assert len(recs.recommend(["i1", "i2"], k=3, tier="d4")) == 3
    table = format_index(index)
    assert all(line.rstrip().endswith("-") for line in table.splitlines()[1:])


def test_the_exporter_prints_a_card_column(exported, tmp_path, capsys):
    run_dir, _, _ = exported
    out = tmp_path / "exp"
    main([str(run_dir), "--sizes", "4,8", "--out", str(out), "--parity-users", "16", "--latency-runs", "5"])
    printed = capsys.readouterr().out
    header, *rows = printed.splitlines()
    assert header.split()[-1] == "card" and "latency" in header
    for d, row in zip((4, 8), rows):
        assert row.split()[0] == str(d) and row.split()[-1] == f"d{d:04d}/README.md"
        assert (out / f"d{d:04d}" / "README.md").is_file()
        assert json.loads((out / f"d{d:04d}" / "metrics.json").read_text())["latency"]["runs"] == 5
    assert f"model cards: {out}/d*/README.md" in printed
    # --no-cards: no card, and the table says so
    bare = tmp_path / "bare"
    main(
        [
            str(run_dir),
            "--sizes",
            "4",
            "--out",
            str(bare),
            "--parity-users",
            "16",
            "--no-cards",
            "--latency-runs",
            "0",
        ]
    )
    header, row, *_ = capsys.readouterr().out.splitlines()
    assert not (bare / "d0004" / "README.md").exists()
    assert row.split()[-2:] == ["-", "-"]  # no latency, no card
    entry = json.loads((bare / "index.json").read_text())["entries"]["4"]
    assert "card" not in entry and "latency_ms" not in entry
    load_artifact(bare / "d0004")
