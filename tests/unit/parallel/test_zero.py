"""congrad.parallel.zero fills a DeepSpeed config for congrad's own training loop and refuses, by
name, what that loop cannot honour. (Training itself under ZeRO 2 and 3 is compared with a
single process in test_distributed.py.)"""

from __future__ import annotations

import pytest

from congrad.config.run import TrainConfig
from congrad.errors import CongradError
from congrad.parallel import launch, zero


def _accelerate_defaults(stage: int) -> dict:
    """What accelerate's DeepSpeed plugin builds from ``accelerate launch`` settings."""
    return {
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": stage},
        "gradient_clipping": "auto",
        "fp16": {"enabled": False},
        "bf16": {"enabled": False},
    }


@pytest.mark.parametrize(("batch", "world", "per_rank"), [(16, 8, 2), (16, 16, 1), (16, 3, 6)])
def test_the_loop_owns_accumulation_clipping_and_the_batch_bookkeeping(batch, world, per_rank):
    config = _accelerate_defaults(3)
    zero.configure(config, TrainConfig(batch_size=batch, max_grad_norm=0.5), world)
    assert config["gradient_accumulation_steps"] == 1
    assert config["gradient_clipping"] == 0.5
    assert config["train_micro_batch_size_per_gpu"] == per_rank
    # DeepSpeed's own check: train_batch_size == micro * accumulation * world
    assert config["train_batch_size"] == per_rank * 1 * world
    assert config["zero_optimization"] == {"stage": 3}  # the user's choices are kept


def test_under_zero3_accumulation_is_congrads_and_deepspeeds_stays_1():
    config = _accelerate_defaults(3)
    zero.configure(config, TrainConfig(batch_size=8, gradient_accumulation_steps=4), world=2)
    assert config["gradient_accumulation_steps"] == 1  # congrad holds the window aside
    assert config["train_batch_size"] == 8


def test_settings_that_already_agree_with_congrad_are_accepted():
    config = {**_accelerate_defaults(2), "gradient_clipping": 1.0}
    zero.configure(config, TrainConfig(max_grad_norm=1.0), world=2)
    assert config["gradient_clipping"] == 1.0


@pytest.mark.parametrize(
    ("change", "train", "names"),
    [
        ({"zero_optimization": {"stage": 1}}, {}, "zero_optimization.stage=1"),
        ({"zero_optimization": {}}, {}, "zero_optimization.stage=0"),
        ({}, {"gradient_accumulation_steps": 2}, "accumulation_steps=2 with DeepSpeed ZeRO-2"),
        ({"gradient_accumulation_steps": 4}, {}, "DeepSpeed gradient_accumulation_steps=4"),
        ({"optimizer": {"type": "AdamW"}}, {}, "'optimizer' section"),
        ({"scheduler": {"type": "WarmupLR"}}, {}, "'scheduler' section"),
        ({"fp16": {"enabled": True}}, {}, "DeepSpeed fp16"),
        ({}, {"mixed_precision": "fp16"}, "DeepSpeed fp16"),
        ({"gradient_clipping": 5.0}, {}, "gradient_clipping=5.0 but train.max_grad_norm=1.0"),
    ],
)
def test_what_the_loop_cannot_honour_is_refused_by_name(change, train, names):
    config = {**_accelerate_defaults(2), **change}
    before = dict(config)
    with pytest.raises(zero.ZeroConfigError, match=names.replace("(", r"\(")) as refused:
        zero.configure(config, TrainConfig(**train), world=2)
    assert config == before  # nothing half-filled
    assert isinstance(refused.value, CongradError)  # the CLI prints it as one line, exit 2


def test_deepspeed_is_requested_by_the_launchers_environment(monkeypatch):
    monkeypatch.delenv(launch.DEEPSPEED_ENV, raising=False)
    assert not launch.deepspeed_requested() and not zero.requested()
    monkeypatch.setenv(launch.DEEPSPEED_ENV, "True")
    assert launch.deepspeed_requested() and zero.requested()
    monkeypatch.setenv(launch.DEEPSPEED_ENV, "false")
    assert not launch.deepspeed_requested()
