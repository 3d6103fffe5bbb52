"""The Python API (recsys/api.py, serving.load): the example of docs/api.md is extracted and run
verbatim, in a folder holding the tiny synthetic dataset at data/generic, then its objects are checked
against the commands' own functions (metrics.json, the trained model, the export, Recommender)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from support import write_processed_dataset

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "api.md"
SIZES = (4, 8, 16)


def documented_example() -> str:
    """The first ```python block after docs/api.md's "## Example" heading."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Example") :]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, f"{DOC}: no ```python block under '## Example'"
    return match.group(1)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A folder with the tiny synthetic dataset where the example expects a processed dataset."""
    folder = tmp_path_factory.mktemp("api-example")
    write_processed_dataset(folder / "data" / "generic")
    return folder


@contextlib.contextmanager
def chdir(folder: Path):
    old = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def example(workdir):
    """(namespace, stdout) of the documented example run in ``workdir``."""
    code = documented_example()
    namespace: dict = {"__name__": "docs_api_example"}
    out = io.StringIO()
    with chdir(workdir), contextlib.redirect_stdout(out):
        exec(compile(code, str(DOC), "exec"), namespace)
    return namespace, out.getvalue()


@pytest.fixture(autouse=True)
def in_workdir(workdir):
    """Every test runs where the example ran: the run's config.yaml names data/generic, relative."""
    with chdir(workdir):
        yield


def test_the_example_is_short_and_complete():
    code = documented_example()
    lines = [line for line in code.splitlines() if line.strip()]
    assert len(lines) <= 15, f"the README-ready example has {len(lines)} lines"
    for call in ("recsys.train(", ".evaluate(", ".slice(", ".export(", "load(", ".recommend("):
        assert call in code, call


def test_import_recsys_and_serving_is_cheap():
    script = "import sys, recsys, serving; print(sorted(m for m in ('torch', 'hydra', 'omegaconf') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]"
    import recsys

    assert {"train", "load_run", "Run", "compose_config"} <= set(dir(recsys))
    with pytest.raises(AttributeError, match="no attribute"):
        recsys.not_an_api_name  # noqa: B018


def test_train_returns_the_finished_run(example, workdir):
    import recsys

    ns, printed = example
    run = ns["run"]
    assert isinstance(run, recsys.Run)
    assert run.run_dir == (workdir / "runs" / "api-tiny").resolve() and run.run_dir.is_absolute()
    assert run.checkpoint == run.run_dir / "checkpoints" / "best.pt"
    assert (run.run_dir / "config.yaml").is_file()
    assert run.config.data.name == "generic" and run.config.trainer.max_epochs == 2
    assert run.ladder == tuple(run.model.ladder) == SIZES
    assert "(4, 8, 16)" in printed
    assert not run.model.training  # eval mode
    on_disk = json.loads((run.run_dir / "metrics.json").read_text())
    assert run.metrics == on_disk and set(on_disk["test"]) == {"4", "8", "16"}
    # every user scored (cold_targets=keep), and the record of how many were left out says so
    users = len(run.dataset.sequences)
    assert on_disk["cold_targets"] == "keep" and on_disk["cold_targets_dropped"] == {
        "validation": 0,
        "test": 0,
    }
    assert on_disk["users"] == {"validation": users, "test": users}


def test_evaluate_reproduces_the_test_metrics_of_the_run(example):
    ns, printed = example
    run, test = ns["run"], ns["test"]
    assert set(test) == set(SIZES)
    for d in SIZES:
        assert {"ndcg@10", "recall@10", "mrr@10", "unseen/ndcg@10", "unseen/recall@10"} <= set(test[d])
        for name, value in run.metrics["test"][str(d)].items():
            assert test[d][name] == pytest.approx(value, abs=1e-9), (d, name)
    assert str({d: round(m["ndcg@10"], 4) for d, m in test.items()}) in printed
    validation = run.evaluate("validation", ks=[5])
    assert set(validation[16]) == {f"{p}{m}@5" for p in ("", "unseen/") for m in ("recall", "ndcg", "mrr")}


def test_slice_is_the_width_d_model(example):
    ns, printed = example
    run, small = ns["run"], ns["small"]
    assert tuple(small.ladder) == (4,) and small.config.width == 4
    inputs = run.dataset.split("test").inputs[:16]
    with torch.no_grad():
        full = run.model.score(inputs)[0]  # the full model's size-4 scores
        got = small.score(inputs)[0]
    torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)
    assert f"{sum(p.numel() for p in small.parameters())} parameters at d=4" in printed


def test_export_writes_every_size_and_load_serves_it(example):
    from recsys.export.artifact import export_digest, load_artifact
    from serving import LoadedExport
    from serving.recommender import Recommender, RequestError

    ns, printed = example
    run, export_dir, recs = ns["run"], ns["export_dir"], ns["recs"]
    assert export_dir == run.run_dir / "export"
    index = json.loads((export_dir / "index.json").read_text())
    assert index["sizes"] == list(SIZES) and index["source"]["checkpoint"] == str(run.checkpoint)
    assert isinstance(recs, LoadedExport)
    assert recs.tiers == {"d4": 4, "d8": 8, "d16": 16} and recs.default == "d16"
    assert recs.digest == export_digest(export_dir)
    history = ["i1", "i2", "i3"]
    top = recs.recommend(history, k=5, tier="d4")
    assert str(top) in printed
    assert len(top) == 5 and not {item for item, _ in top} & set(history)
    assert all(item in run.dataset.item_ids for item, _ in top)
    assert [s for _, s in top] == sorted((s for _, s in top), reverse=True)
    direct = Recommender(load_artifact(export_dir / "d0004")).recommend(history, k=5)
    assert top == direct
    assert recs.recommend(history, k=5, tier=4) == top  # a size names its tier
    assert recs.recommend(history, k=3) == recs.recommend(history, k=3, tier="d16")  # the default tier
    batch = recs.recommend_batch([history, ["i7"]], k=2, tier="d8")
    single = recs.recommend(history, k=2, tier="d8")
    assert len(batch) == 2 and [i for i, _ in batch[0]] == [i for i, _ in single]  # same ranking
    assert [s for _, s in batch[0]] == pytest.approx([s for _, s in single], rel=1e-5)
    with pytest.raises(RequestError, match="unknown tier"):
        recs.recommend(history, tier="d5")
    with pytest.raises(RequestError, match="history is empty"):
        recs.recommend([], tier="d4")


def test_load_run_and_export_a_subset(example, tmp_path):
    import recsys
    from serving import load

    ns, _ = example
    run = ns["run"]
    again = recsys.load_run(run.run_dir)  # best checkpoint
    for key, value in run.model.state_dict().items():
        torch.testing.assert_close(again.model.state_dict()[key], value, rtol=0, atol=0)
    last = recsys.load_run(run.run_dir / "checkpoints" / "last.pt")  # a checkpoint file
    assert last.checkpoint.name == "last.pt" and last.run_dir == run.run_dir
    out = again.export(out=tmp_path / "small", sizes=[4], parity_users=16)
    assert out == tmp_path / "small"
    assert json.loads((out / "index.json").read_text())["sizes"] == [4]
    assert load(out, tiers={"small": 4}).recommend(["i1"], k=2, tier="small") == ns["recs"].recommend(
        ["i1"], k=2, tier="d4"
    )
    with pytest.raises(FileNotFoundError, match="neither a run directory"):
        recsys.load_run(tmp_path / "nowhere")


def test_overrides_as_a_dict_compose_like_strings():
    import recsys

    listed = recsys.compose_config(["experiment=tiny", "model.ladder=[4,8]", "model.width=8", "resume=null"])
    mapped = recsys.compose_config(
        {"experiment": "tiny", "model.ladder": [4, 8], "model.width": 8, "resume": None}
    )
    assert listed == mapped and list(mapped.model.ladder) == [4, 8]
    with pytest.raises(TypeError, match="list of 'key=value' strings"):
        recsys.compose_config("experiment=tiny")
    with pytest.raises(Exception, match="not_a_key"):
        recsys.compose_config(["experiment=tiny", "trainer.not_a_key=1"])


def test_train_refuses_the_independent_baseline(tmp_path):
    import recsys

    with pytest.raises(ValueError, match="model.independent=true"):
        recsys.train(["experiment=tiny", "model.independent=true"], run_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_readme_shows_exactly_the_executed_example():
    # the README's Python API block is the docs/api.md example this file runs, character for character
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "```python\n" + documented_example() + "```" in readme
