"""Untrusted exports (docs/serving.md, Security): the default load path never unpickles and the
program engine is an explicit opt-in, every path read from an export stays inside it, index.json is
covered by the checksums, an export can be pinned by a digest kept outside it, a tier must point at
its own size's folder, and malformed files fail with errors naming them."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import torch
import uvicorn
from serving_helpers import reference_digest, sha256

from recsys.export import artifact
from recsys.export.artifact import ArtifactError, load_artifact
from serving import cli
from serving.recommender import Recommender
from serving.tiers import TierSet, load_tiers_file


@pytest.fixture
def export_loads(monkeypatch):
    """Every call of torch.export.load (the unpickling loader) is recorded and then refused."""
    calls = []

    def load(*args, **kwargs):
        calls.append(args)
        raise RuntimeError("torch.export.load called: the program was unpickled")

    monkeypatch.setattr(torch.export, "load", load)
    return calls


@pytest.fixture
def served(monkeypatch):
    """uvicorn.Server.run replaced by a recorder: the CLI's start-up checks run, no server starts."""
    started = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **k: started.append(self.config))
    return started


def edit_json(path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, indent=2))


# ---------------------------------------------------------------------------- item 6: no unpickling
def test_crafted_program_is_never_loaded_without_the_opt_in(export_copy, reseal, export_loads, served):
    (export_copy / "d0008" / "program.pt2").write_bytes(b"\x80\x04crafted pickle payload")
    reseal(export_copy)  # the attacker also rewrote checksums.json: in-artifact checksums cannot help

    tiers = TierSet(export_copy)  # default engine: safetensors + JSON only
    assert tiers.get("d8").recommend(["i1", "i2"], k=3)
    with pytest.raises(ArtifactError, match="trust_program"):
        TierSet(export_copy, engine="program")
    with pytest.raises(ArtifactError, match="trust_program"):
        Recommender(load_artifact(export_copy / "d0008"), engine="program")
    with pytest.raises(SystemExit, match="--trust-program"):
        cli.main([str(export_copy), "--engine", "program"])
    assert export_loads == [] and served == []

    # the explicit opt-in is the only way to the unpickling loader
    with pytest.raises(RuntimeError, match="unpickled"):
        TierSet(export_copy, engine="program", trust_program=True)
    assert len(export_loads) >= 1


def test_trusted_program_engine_still_works(export_copy):
    art = load_artifact(export_copy / "d0008", trust_program=True)
    a = Recommender(load_artifact(export_copy / "d0008")).recommend(["i1", "i2"], k=10)
    b = Recommender(art, engine="program").recommend(["i1", "i2"], k=10)
    assert [i for i, _ in a] == [i for i, _ in b]


# ---------------------------------------------------------------------------- item 6: digest
def test_expect_digest_refuses_a_different_export(export_copy, reseal, export_loads, served):
    digest = reference_digest(export_copy)
    assert artifact.export_digest(export_copy) == digest
    TierSet(export_copy, expect_digest=digest)
    TierSet(export_copy, expect_digest=digest.upper())
    with pytest.raises(ArtifactError, match="digest"):
        TierSet(export_copy, expect_digest="0" * 64)
    with pytest.raises(ValueError, match="digest"):
        TierSet(export_copy, expect_digest="not-hex")

    cli.main([str(export_copy), "--expect-digest", digest])
    assert len(served) == 1  # right digest: the server starts
    with pytest.raises(SystemExit, match="digest"):
        cli.main([str(export_copy), "--expect-digest", "ab" * 32])
    with pytest.raises(SystemExit, match="--no-verify"):
        cli.main([str(export_copy), "--expect-digest", digest, "--no-verify"])
    assert len(served) == 1

    # a replaced program with every checksum rewritten passes the in-artifact checks ...
    (export_copy / "d0016" / "program.pt2").write_bytes(b"crafted")
    reseal(export_copy)
    TierSet(export_copy)
    # ... but not the digest the user kept
    with pytest.raises(ArtifactError, match="digest"):
        TierSet(export_copy, engine="program", trust_program=True, expect_digest=digest)
    assert export_loads == []


def test_digest_matches_the_documented_shell_command(export_copy):
    if shutil.which("sha256sum") is None:
        pytest.skip("no sha256sum")
    cmd = "sha256sum index.json d*/checksums.json | LC_ALL=C sort -k2 | sha256sum"
    out = subprocess.run(["sh", "-c", cmd], cwd=export_copy, capture_output=True, text=True, check=True)
    assert out.stdout.split()[0] == artifact.export_digest(export_copy)


def test_tampered_index_json_is_detected(export_copy):
    TierSet(export_copy)
    edit_json(
        export_copy / "index.json", lambda i: i["entries"]["8"]["metrics"]["test"].update({"ndcg@10": 0.99})
    )
    with pytest.raises(ArtifactError, match="index.json"):
        TierSet(export_copy)
    TierSet(export_copy, verify=False)  # opting out still loads

    shutil.copy(export_copy / "index.json", export_copy / "index.bak")
    (export_copy / "checksums.json").unlink()
    with pytest.raises(ArtifactError, match="checksums.json"):
        TierSet(export_copy)


def test_tampered_size_checksums_file_is_detected(export_copy, reseal):
    reseal(export_copy)
    sums = export_copy / "d0008" / "checksums.json"
    root = (export_copy / "checksums.json").read_bytes()
    (export_copy / "d0008" / "items.json").write_text(json.dumps({"item_ids": [f"x{i}" for i in range(60)]}))
    reseal(export_copy)
    (export_copy / "checksums.json").write_bytes(root)  # size folder re-sealed, root left alone
    with pytest.raises(ArtifactError, match=r"d0008/checksums.json"):
        TierSet(export_copy)
    assert sums.is_file()


# ---------------------------------------------------------------------------- item 6: paths
@pytest.mark.parametrize(
    "where",
    [
        "index-dotdot",
        "index-absolute",
        "index-nested",
        "index-symlink",
        "program-dotdot",
        "program-absolute",
        "program-nested",
        "file-symlink",
        "checksums-dotdot",
    ],
)
def test_paths_must_resolve_inside_the_export(export_copy, tmp_path, reseal, export_loads, where):
    outside = tmp_path / "outside"
    shutil.copytree(export_copy / "d0016", outside)
    index = export_copy / "index.json"
    config = export_copy / "d0016" / "config.json"
    if where == "index-dotdot":
        edit_json(index, lambda i: i["entries"]["16"].update(dir="../outside"))
    elif where == "index-absolute":
        edit_json(index, lambda i: i["entries"]["16"].update(dir=str(outside)))
    elif where == "index-nested":
        edit_json(index, lambda i: i["entries"]["16"].update(dir="d0016/../../outside"))
    elif where == "index-symlink":
        shutil.rmtree(export_copy / "d0016")
        os.symlink(outside, export_copy / "d0016")
    elif where == "program-dotdot":
        edit_json(config, lambda c: c.update(program="../d0008/program.pt2"))
    elif where == "program-absolute":
        edit_json(config, lambda c: c.update(program=str(outside / "program.pt2")))
    elif where == "program-nested":
        edit_json(config, lambda c: c.update(program="sub/program.pt2"))
    elif where == "file-symlink":
        (export_copy / "d0016" / "items.json").unlink()
        os.symlink(outside / "items.json", export_copy / "d0016" / "items.json")
    elif where == "checksums-dotdot":
        sums = export_copy / "d0016" / "checksums.json"
        edit_json(sums, lambda s: s.update({"../d0008/items.json": s["items.json"]}))
    reseal(export_copy)
    if where == "checksums-dotdot":  # reseal rewrote it; put the escape back and re-seal the root only
        sums = export_copy / "d0016" / "checksums.json"
        edit_json(sums, lambda s: s.update({"../d0008/items.json": s["items.json"]}))
        root = json.loads((export_copy / "checksums.json").read_text())
        root["d0016/checksums.json"] = sha256(sums)
        (export_copy / "checksums.json").write_text(json.dumps(root))
    for verify in (True, False) if where != "checksums-dotdot" else (True,):  # checksums.json: read to verify
        with pytest.raises(ArtifactError, match="inside") as err:
            TierSet(export_copy, {"t16": 16}, engine="program", trust_program=True, verify=verify)
        assert "index.json" in str(err.value) or "config.json" in str(err.value) or "d0016" in str(err.value)
    assert export_loads == []


# ---------------------------------------------------------------------------- item 8
def test_tier_pointing_at_another_sizes_folder_is_refused(export_copy, reseal):
    edit_json(export_copy / "index.json", lambda i: i["entries"]["16"].update(dir="d0008"))
    reseal(export_copy)
    for verify in (True, False):
        with pytest.raises(ArtifactError, match=r"size 16.*d0008.*size 8"):
            TierSet(export_copy, verify=verify)
    TierSet(export_copy, {"small": 4, "mid": 8})  # the tiers that are not affected still load


def test_config_width_must_match_its_size(export_copy, reseal):
    edit_json(export_copy / "d0008" / "config.json", lambda c: c["model_config"].update(ladder=[4, 8, 16]))
    reseal(export_copy)
    with pytest.raises(ArtifactError, match="config.json"):
        load_artifact(export_copy / "d0008")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.update(version=1), "re-export"),
        (lambda c: c["model_config"]["backbone"].update(_target_="os.system"), "unknown backbone config"),
        (lambda c: c["model_config"]["backbone"].update(command="rm -rf /"), "no fields"),
        (lambda c: c["model_config"]["backbone"].update(ladder=[4, 16]), "does not fit"),
        (lambda c: c["model_config"]["backbone"].update(max_len=99), "does not fit"),
    ],
)
def test_config_json_backbone_is_rebuilt_only_from_registered_classes(export_copy, reseal, change, message):
    edit_json(export_copy / "d0008" / "config.json", change)
    reseal(export_copy)
    with pytest.raises(ArtifactError, match=rf"d0008/config.json.*{message}"):
        load_artifact(export_copy / "d0008")


def test_tiers_file_with_a_yaml_error_names_the_file(export_copy, tmp_path, served):
    bad = tmp_path / "tiers.yaml"
    bad.write_text("tiers: {small: 4\n  large: [16\n")
    with pytest.raises(ValueError, match=r"tiers.yaml.*YAML"):
        load_tiers_file(bad)
    with pytest.raises(ValueError, match="tiers.yaml"):
        TierSet(export_copy, bad)
    with pytest.raises(SystemExit, match="tiers.yaml"):
        cli.main([str(export_copy), "--tiers", str(bad)])
    with pytest.raises(ValueError, match="nowhere.yaml"):
        load_tiers_file(tmp_path / "nowhere.yaml")
    bad.write_bytes(b"tiers:\n  small: \xff\xfe\n")
    with pytest.raises(ValueError, match="tiers.yaml"):
        load_tiers_file(bad)
    assert served == []


@pytest.mark.parametrize("content", [{"ids": ["i1"]}, ["i1"], {"item_ids": "i1"}, {"item_ids": [["i1"]]}])
def test_items_json_without_item_ids_names_the_file(export_copy, reseal, content):
    (export_copy / "d0008" / "items.json").write_text(json.dumps(content))
    reseal(export_copy)
    with pytest.raises(ArtifactError, match=r"d0008/items.json"):
        load_artifact(export_copy / "d0008")


@pytest.mark.parametrize("key", ["size", "num_items", "max_len", "model_config"])
def test_config_json_missing_a_field_names_the_file(export_copy, reseal, key):
    edit_json(export_copy / "d0008" / "config.json", lambda c: c.pop(key))
    reseal(export_copy)
    with pytest.raises(ArtifactError, match=rf"d0008/config.json.*{key}"):
        load_artifact(export_copy / "d0008")


@pytest.mark.parametrize(
    "change",
    [
        lambda i: i.pop("entries"),
        lambda i: i.update(sizes="4"),
        lambda i: i["entries"].pop("8"),
        lambda i: i["entries"]["8"].pop("dir"),
    ],
)
def test_malformed_index_json_names_the_file(export_copy, reseal, change):
    edit_json(export_copy / "index.json", change)
    reseal_safe = json.loads((export_copy / "index.json").read_text())
    if isinstance(reseal_safe.get("entries"), dict) and all(
        "dir" in e for e in reseal_safe["entries"].values()
    ):
        reseal(export_copy)
    with pytest.raises(ArtifactError, match="index.json"):
        TierSet(export_copy, verify=False)
