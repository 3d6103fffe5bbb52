"""recsys-bench quality on the tiny experiment: real runs (nested and independent, two seeds),
mean +- std per size, the resumable run folders, the report and the targets' arithmetic."""

from __future__ import annotations

import json

from support import write_processed_dataset

from recsys.bench import cli, quality


def test_quality_suite_runs_aggregates_and_resumes(tmp_path, capsys):
    dataset = write_processed_dataset(tmp_path / "dataset")
    argv = [
        "quality",
        "--experiment", "tiny",
        "--seeds", "1", "2",
        "--modes", "nested", "independent",
        "--runs", str(tmp_path / "runs"),
        "--out", str(tmp_path / "out"),
        "--set", "data.name=generic", f"data.path={dataset}", "trainer.max_epochs=1",
    ]  # fmt: skip
    cli.main(argv)
    doc = json.loads((tmp_path / "out" / "quality.json").read_text())
    nested, independent = doc["summary"]["default/nested"], doc["summary"]["default/independent"]
    assert nested["sizes"] == independent["sizes"] == [4, 8, 16]
    for row in (nested, independent):
        for metric in quality.METRICS:
            for d in ("4", "8", "16"):
                st = row["metrics"][metric][d]
                assert st["n"] == 2 and len(st["values"]) == 2
                assert abs(st["mean"] - sum(st["values"]) / 2) < 1e-12
        assert row["train_seconds"]["mean"] > 0
    # the independent time is the sum over its sizes' runs
    sub = [
        json.loads(
            (
                tmp_path
                / "runs"
                / "tiny"
                / "default"
                / "independent"
                / "seed1"
                / f"d{d:04d}"
                / "metrics.json"
            ).read_text()
        )
        for d in (4, 8, 16)
    ]
    assert abs(independent["train_seconds"]["values"][0] - sum(s["train_seconds"] for s in sub)) < 1e-6
    ratio = next(t for t in doc["targets"] if t["target"] == "nested / independent ndcg@10 d=16")
    want = nested["metrics"]["ndcg@10"]["16"]["mean"] / independent["metrics"]["ndcg@10"]["16"]["mean"]
    assert abs(ratio["value"] - want) < 1e-12 and ratio["met"] == (want >= 0.98)
    md = (tmp_path / "out" / "quality.md").read_text()
    assert "| default/nested |" in md and "±" in md and "## Targets" in md
    assert (tmp_path / "out" / "quality.png").stat().st_size > 0
    capsys.readouterr()
    cli.main(argv)  # everything is reused: a killed suite resumes where it stopped
    assert capsys.readouterr().out.count("  reuse ") == 4
    # a run whose saved configuration no longer matches what its command resolves to (a default
    # changed in configs/) is stale: moved aside and trained again, never reused
    run = tmp_path / "runs" / "tiny" / "default" / "nested" / "seed1"
    saved = run / "config.yaml"
    saved.write_text(saved.read_text().replace("max_epochs: 1", "max_epochs: 7"))
    cli.main(argv)
    out = capsys.readouterr().out
    assert out.count("  reuse ") == 3 and "stale" in out and "trainer.max_epochs" in out
    assert (run.with_name("seed1.stale") / "metrics.json").is_file()
    assert "max_epochs: 1" in saved.read_text() and (run / "metrics.json").is_file()


def test_stale_keys_name_every_difference():
    expected = {"a": 1, "b": {"c": 2, "d": [1, 2]}}
    assert quality._stale_keys(expected, expected) == []
    assert quality._stale_keys(expected, {"a": 1, "b": {"c": 3, "d": [1, 2]}, "e": 0}) == ["b.c", "e"]
    assert quality._stale_keys(expected, None) == ["<root>"]
    # where the run lives is not what it trains: a moved run folder is reused
    assert quality._stale_keys({**expected, "run_dir": "/a/seed1"}, {**expected, "run_dir": "b/seed1"}) == []
    assert quality._stale_keys({"x": {"run_dir": 1}}, {"x": {"run_dir": 2}}) == ["x.run_dir"]


def test_stock_sasrec_targets_use_the_mean_of_its_seeds():
    row = {
        "sizes": [32, 64],
        "metrics": {m: {32: {"mean": 0.06}, 64: {"mean": 0.07}} for m in quality.METRICS},
    }
    rows = {t["target"]: t for t in quality.targets({"default/nested": row}, "ml-100k")}
    sasrec = rows["default ndcg@10 d=64 vs stock SASRec"]
    assert abs(sasrec["goal"] - (0.0643 + 0.0595) / 2) < 1e-12 and sasrec["met"]
    assert not rows["default unseen/ndcg@10 d=64 vs stock SASRec"]["met"]
    assert rows["default ndcg@10 d=32 >= 0.95 x SASRec"]["met"]


def test_a_killed_run_resumes_from_its_checkpoint_and_equals_an_uninterrupted_one(tmp_path, capsys):
    from recsys.api import compose_config
    from recsys.training.runner import run

    dataset = write_processed_dataset(tmp_path / "dataset")
    common = ["data.name=generic", f"data.path={dataset}", "trainer.max_epochs=1", "backbone.dropout=0.2"]

    def train(folder, *extra):  # in this process, the configuration the suite's command composes
        args = ["experiment=tiny", *common, "seed=1", f"run_dir={folder}", "trainer.progress=false", *extra]
        run(compose_config(args), folder)
        return folder

    # the suite killed mid-run: the run's folder holds its config and a checkpoint, no metrics
    folder = train(tmp_path / "runs" / "tiny" / "default" / "nested" / "seed1", "trainer.stop_after_steps=3")
    assert (folder / "checkpoints" / "last.pt").is_file() and not (folder / "metrics.json").is_file()
    argv = ["quality", "--experiment", "tiny", "--seeds", "1", "--modes", "nested",
            "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out"), "--set", *common]  # fmt: skip
    capsys.readouterr()
    cli.main(argv)
    out = capsys.readouterr().out
    assert "  resume default/nested/seed1" in out and "  run " not in out and "stale" not in out
    assert "Resumed from" in (folder / "bench_stdout.log").read_text()
    killed, whole = (
        json.loads((f / "metrics.json").read_text()) for f in (folder, train(tmp_path / "whole"))
    )
    assert killed["test"] == whole["test"] and killed["validation"] == whole["validation"]
    cli.main(argv)
    assert "  reuse " in capsys.readouterr().out  # finished now: reused as it is


def test_a_checkpoint_of_any_independent_size_makes_a_run_resumable(tmp_path):
    assert not quality._has_checkpoint(tmp_path)
    (tmp_path / "d0008" / "checkpoints").mkdir(parents=True)
    assert not quality._has_checkpoint(tmp_path)
    (tmp_path / "d0008" / "checkpoints" / "last.pt").write_bytes(b"")
    assert quality._has_checkpoint(tmp_path)


def test_a_quick_check_never_overwrites_the_full_suites_results():
    assert quality.result_stem(quality.parse_args([])) == "quality"
    assert quality.result_stem(quality.parse_args(["--quick"])) == "quality_quick"
    assert quality.result_stem(quality.parse_args(["--quick", "--name", "mine"])) == "mine"


def test_a_recipe_that_changes_only_the_selection_retests_the_runs_without_training(tmp_path, capsys):
    import torch

    dataset = write_processed_dataset(tmp_path / "dataset")
    argv = [
        "quality",
        "--experiment", "tiny",
        "--seeds", "1",
        "--modes", "nested", "independent",
        "--runs", str(tmp_path / "runs"),
        "--out", str(tmp_path / "out"),
        "--set", "data.name=generic", f"data.path={dataset}", "trainer.max_epochs=2",
        "trainer.val_every_n_steps=2", "trainer.patience=0",
    ]  # fmt: skip
    cli.main(argv)
    nested = tmp_path / "runs" / "tiny" / "default" / "nested" / "seed1"
    first = json.loads((nested / "metrics.json").read_text())
    assert first["selection"] == "best" and first["best_step"] == first["best_validation_step"]
    last_step = torch.load(nested / "checkpoints" / "last.pt", weights_only=True)["step"]
    capsys.readouterr()
    cli.main([*argv, "trainer.select=last"])
    out = capsys.readouterr().out
    assert out.count("  retest ") == 2 and "  run " not in out  # nested and independent, nothing trained
    again = json.loads((nested / "metrics.json").read_text())
    assert again["selection"] == "last" and again["best_step"] == last_step
    assert again["best_validation_step"] == first["best_validation_step"]
    # the same training, tested again (its clock as last.pt recorded it, before the final save)
    assert abs(again["train_seconds"] - first["train_seconds"]) < 1.0
    assert (nested / "checkpoints" / "best_validation.pt").is_file()
    sub = json.loads((nested.parent.parent / "independent" / "seed1" / "d0016" / "metrics.json").read_text())
    assert sub["selection"] == "last"
    # and back: the best validation checkpoint comes back to best.pt, the first figures with it
    capsys.readouterr()
    cli.main(argv)
    assert capsys.readouterr().out.count("  retest ") == 2
    back = json.loads((nested / "metrics.json").read_text())
    assert back["selection"] == "best" and back["test"] == first["test"]
    assert torch.load(nested / "checkpoints" / "best.pt", weights_only=True)["step"] == first["best_step"]
