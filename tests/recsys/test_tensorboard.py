"""TensorBoard layout of one tiny training run, read back from the event files: one run per size
(``tb/d0004``, ...) with the same tags, a ``tb/train`` run for the size-independent scalars and the
metric-vs-size images, the Custom Scalars layout, and the HParams run with per-size test metrics."""

from __future__ import annotations

import io
import json
import math
import re

import pytest
from PIL import Image
from support import tiny_cfg, write_processed_dataset
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import metadata as hparams_metadata

from recsys.training.runner import run
from recsys.training.tensorboard import NullLogger

SIZES = (4, 8, 16)
METRIC_NAMES = {f"{p}{m}@{k}" for p in ("", "unseen/") for m in ("recall", "ndcg", "mrr") for k in (5, 10)}
LOG_EVERY = 4


def events(directory) -> EventAccumulator:
    acc = EventAccumulator(str(directory), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 3-epoch tiny run (3 validations, the loss logged every 4 steps) and what it reported."""
    root = tmp_path_factory.mktemp("tb")
    dataset = write_processed_dataset(root / "dataset")
    out = run(
        tiny_cfg(dataset, "trainer.max_epochs=3", f"trainer.log_every_n_steps={LOG_EVERY}"), root / "run"
    )
    trainer = out["trainer"]
    return {
        "tb": out["run_dir"] / "tb",
        "val_steps": [h["step"] for h in trainer.val_history],
        "last_step": trainer.step,
        "metrics": json.loads((out["run_dir"] / "metrics.json").read_text()),
    }


def test_one_run_per_size_with_the_same_tags(tiny_run):
    runs = {p.name for p in tiny_run["tb"].iterdir() if p.is_dir()}
    assert runs == {"d0004", "d0008", "d0016", "train", "hparams"}
    assert not list(tiny_run["tb"].glob("events.out.tfevents.*")), "nothing is written outside a run"
    expected = {"train/loss"} | {f"{split}/{name}" for split in ("val", "test") for name in METRIC_NAMES}
    for size in SIZES:
        acc = events(tiny_run["tb"] / f"d{size:04d}")
        assert set(acc.Tags()["scalars"]) == expected, size
        assert not acc.Tags()["images"]  # the images live in the train run, once


def test_validation_values_one_per_validation_and_test_values_match_metrics_json(tiny_run):
    val_steps = tiny_run["val_steps"]
    assert len(val_steps) == 3
    for size in SIZES:
        acc = events(tiny_run["tb"] / f"d{size:04d}")
        for name in METRIC_NAMES:
            points = acc.Scalars(f"val/{name}")
            assert [p.step for p in points] == val_steps, (size, name)
            assert all(0.0 <= p.value <= 1.0 for p in points), (size, name)
            (test,) = acc.Scalars(f"test/{name}")  # once, at the end, for the best checkpoint
            assert test.step == tiny_run["last_step"]
            assert test.value == pytest.approx(tiny_run["metrics"]["test"][str(size)][name], abs=1e-6)
        # a larger model is not a copy of a smaller one: the sizes have their own curves
    curves = {
        size: [p.value for p in events(tiny_run["tb"] / f"d{size:04d}").Scalars("val/recall@10")]
        for size in SIZES
    }
    assert len({tuple(c) for c in curves.values()}) > 1


def test_training_loss_per_size_and_the_train_run_scalars(tiny_run):
    steps = list(range(LOG_EVERY, tiny_run["last_step"] + 1, LOG_EVERY))
    assert len(steps) >= 4
    for size in SIZES:
        loss = events(tiny_run["tb"] / f"d{size:04d}").Scalars("train/loss")
        assert [p.step for p in loss] == steps
        assert all(math.isfinite(p.value) and p.value > 0 for p in loss)
        assert loss[-1].value < loss[0].value, f"d{size}: the training loss did not drop"
    train = events(tiny_run["tb"] / "train")
    assert set(train.Tags()["scalars"]) == {"train/loss_total", "train/lr", "train/sequences_per_s"}
    for tag in train.Tags()["scalars"]:
        points = train.Scalars(tag)
        assert [p.step for p in points] == steps, tag
        assert all(math.isfinite(p.value) and p.value >= 0 for p in points), tag
    lr = [p.value for p in train.Scalars("train/lr")]
    assert lr[0] > lr[-1] >= 0  # warm-up then cosine decay (to 0 at the last step)


def test_metric_vs_size_images_at_every_validation(tiny_run):
    train = events(tiny_run["tb"] / "train")
    assert set(train.Tags()["images"]) == {
        "val/metrics_vs_size",
        "val/metrics_vs_size_over_training",
        "test/metrics_vs_size",
    }
    val_steps = tiny_run["val_steps"]
    assert [i.step for i in train.Images("val/metrics_vs_size")] == val_steps
    assert [i.step for i in train.Images("val/metrics_vs_size_over_training")] == val_steps[1:]
    assert [i.step for i in train.Images("test/metrics_vs_size")] == [tiny_run["last_step"]]
    for tag in train.Tags()["images"]:
        for image in train.Images(tag):
            png = Image.open(io.BytesIO(image.encoded_image_string))
            assert png.format == "PNG" and png.size == (image.width, image.height)
            assert image.width > 600 and image.height > 200


def test_custom_scalars_layout_overlays_the_sizes(tiny_run):
    train = events(tiny_run["tb"] / "train")
    (tensor,) = train.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(tensor.tensor_proto.string_val[0])
    charts = {chart.title: chart for category in layout.category for chart in category.chart}
    size_tags = set(events(tiny_run["tb"] / "d0008").Tags()["scalars"])
    for tag in ("val/ndcg@10", "val/unseen/recall@5", "test/mrr@10", "train/loss"):
        chart = next(
            c for c in charts.values() if c.multiline.tag and c.multiline.tag[0] == f"^{re.escape(tag)}$"
        )
        # the regex is over tags: it picks exactly that tag, which every size run has
        assert [t for t in size_tags if re.search(chart.multiline.tag[0], t)] == [tag]


def test_hparams_run_holds_per_size_test_metrics(tiny_run):
    acc = events(tiny_run["tb"] / "hparams")
    content = acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    experiment = hparams_metadata.parse_experiment_plugin_data(content[hparams_metadata.EXPERIMENT_TAG])
    session = hparams_metadata.parse_session_start_info_plugin_data(
        content[hparams_metadata.SESSION_START_INFO_TAG]
    )
    assert {h.name for h in experiment.hparam_infos} >= {"backbone", "width", "ladder", "lr", "seed"}
    assert session.hparams["width"].number_value == 16
    names = {m.name.tag for m in experiment.metric_infos}
    k10 = {n for n in METRIC_NAMES if n.endswith("@10")}
    assert names == {f"hparam/test_{n}_d{size:04d}" for n in k10 for size in SIZES}
    for size in SIZES:
        for name in k10:
            (point,) = acc.Scalars(f"hparam/test_{name}_d{size:04d}")
            assert point.value == pytest.approx(tiny_run["metrics"]["test"][str(size)][name], abs=1e-6)


def test_null_logger_does_nothing():
    logger = NullLogger()
    assert logger.log_eval("validation", 1, {4: {"ndcg@10": 0.5}}) is None
    assert logger.log_train(1, 1.0, [1.0], 1e-3, 10.0) is None
    assert logger.close() is None
