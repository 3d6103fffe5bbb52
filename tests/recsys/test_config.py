"""Every config composes and instantiates; bad values fail with a message naming the key."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf.errors import ConfigKeyError

from recsys.builders import model_config
from recsys.config import CONFIG_DIR, validate

GROUPS = ["data", "model", "backbone", "loss", "trainer", "optimizer", "eval", "experiment"]


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def all_options():
    for group in GROUPS:
        for path in sorted((Path(CONFIG_DIR) / group).glob("*.yaml")):
            yield f"{group}={path.stem}"


@pytest.mark.parametrize("override", list(all_options()))
def test_every_config_composes_validates_and_instantiates(override):
    cfg = compose_cfg(override)
    validate(cfg)
    optimizer_factory = instantiate(cfg.trainer.optimizer)
    assert callable(optimizer_factory)
    loss = instantiate(cfg.loss)
    assert callable(loss) and callable(loss.prepare)
    mc = model_config(cfg)
    assert mc.ladder[-1] == cfg.model.width


@pytest.mark.parametrize("override", ["trainer.max_epoch=3", "loss.num_negatives=16"])
def test_typo_in_a_key_fails_at_composition(override):
    # loss.num_negatives belongs to loss=sampled_softmax only: each loss option has its own schema
    with pytest.raises((ConfigCompositionException, ConfigKeyError)):
        compose_cfg(override)


def test_optimizer_group_is_placed_under_the_trainer():
    cfg = compose_cfg("trainer=gpu", "trainer.optimizer.lr=3e-4")
    assert cfg.trainer.optimizer._target_ == "torch.optim.AdamW" and cfg.trainer.optimizer.lr == 3e-4


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["data.name=netflix"], "unknown dataset 'netflix'"),
        (["model.ladder=[8,32,16]", "model.width=16"], "strictly increasing"),
        (["model.width=100"], "model.width=100 is not a size"),
        (["eval.ks=[0,10]"], "eval.ks"),
        (["eval.ks=[5,-10]", "trainer.monitor=ndcg@5"], "eval.ks"),
        (["trainer.monitor=ndcg@7"], "trainer.monitor"),
        (["data.cold_targets=filter"], "data.cold_targets"),
        (["loss.logit_scale_exponent=3"], "loss.logit_scale_exponent"),
        (["loss.cross_size_grad=-0.5"], "loss.cross_size_grad must be in [0, 1]"),
        (["model.cross_size_grad=1.5"], "model.cross_size_grad must be in [0, 1]"),
        (["loss.cross_size_grad_chunks=[0,1]"], "loss.cross_size_grad_chunks needs"),
        (["loss.cross_size_grad_chunks=[0,1,1,1,1,1,1,1]", "loss.cross_size_grad=0.5"], "not both"),
        (["loss.size_weights=[1,2]"], "loss.size_weights has 2 weights"),
        (["backbone.dropout=1.5"], "backbone.dropout"),
        (["trainer.monitor_size=12"], "trainer.monitor_size=12"),
    ],
)
def test_bad_values_fail_with_a_clear_message(overrides, message):
    cfg = compose_cfg(*overrides)
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        validate(cfg)


def test_width_truncates_the_ladder():
    cfg = compose_cfg("model.width=256")
    assert model_config(cfg).ladder == (8, 16, 32, 64, 128, 256)


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.optimizer.lr=0", "trainer.optimizer.lr must be a positive finite number"),
        ("trainer.optimizer.lr=-1e-3", "trainer.optimizer.lr"),
        ("trainer.optimizer.lr=inf", "trainer.optimizer.lr"),
        ("trainer.optimizer.weight_decay=-0.1", "trainer.optimizer.weight_decay"),
        ("trainer.warmup_steps=-1", "trainer.warmup_steps must be >= 0"),
        ("trainer.patience=-2", "trainer.patience must be >= 0"),
        ("trainer.max_nonfinite_steps=-1", "trainer.max_nonfinite_steps"),
        ("trainer.grad_clip=inf", "trainer.grad_clip must be finite"),
        ("trainer.min_lr_ratio=2", "trainer.min_lr_ratio"),
        ("resume_allow_changes=[trainer.max_epoch]", "resume_allow_changes names unknown keys"),
        (
            "loss._target_=recsys.losses.matryoshka.NoSuchLoss",
            "loss._target_='recsys.losses.matryoshka.NoSuchLoss'",
        ),
        ("trainer.optimizer._target_=torch.optim.Adamm", "trainer.optimizer._target_='torch.optim.Adamm'"),
    ],
)
def test_absurd_training_values_are_rejected_naming_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        validate(compose_cfg(override))


def test_keys_added_since_a_checkpoint_take_the_value_the_old_run_behaved_with():
    from recsys.config import ADDED_KEY_DEFAULTS, check_resume_changes, with_added_defaults

    old = {
        "loss": {"_target_": "recsys.losses.matryoshka.FullSoftmaxLoss"},
        "model": {"width": 64},
        "data": {"name": "ml-100k"},
        "trainer": {"max_epochs": 3},
    }
    filled = with_added_defaults(old)
    assert filled["loss"]["cross_size_grad"] == 1.0 and filled["model"]["cross_size_grad"] == 1.0
    assert "cross_size_grad" not in old["model"]  # the checkpoint's dict is not modified
    for (group, key), value in ADDED_KEY_DEFAULTS.items():
        assert filled[group][key] == value
    # a run resumed with the value the old run behaved with is no change; another value is refused
    check_resume_changes(old, filled, [], "ckpt")
    changed = with_added_defaults(old)
    changed["model"]["cross_size_grad"] = 0.0
    with pytest.raises(ValueError, match=r"model.cross_size_grad: 1.0 -> 0.0"):
        check_resume_changes(old, changed, [], "ckpt")
    sampled = with_added_defaults({"loss": {"_target_": "recsys.losses.sampled.SampledSoftmaxLoss"}})
    assert "cross_size_grad" not in sampled["loss"]  # keys of the full-softmax option only
