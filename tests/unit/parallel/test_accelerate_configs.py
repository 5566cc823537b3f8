"""The shipped ``accelerate launch`` configs load with accelerate's own reader and ask for
what congrad's trainer supports (DDP, FSDP version 2 or DeepSpeed ZeRO 2/3, 8 GPUs per
machine, mixed precision left to congrad's ``train.mixed_precision``). The DeepSpeed ones
are also turned into the ranks' environment the way ``accelerate launch`` does; the CPU
tests in test_distributed.py launch with that very environment."""

from __future__ import annotations

import pytest
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.utils import DistributedType

from congrad.config.run import TrainConfig
from congrad.parallel import zero
from tests.conftest import REPO_ROOT, accelerate_launch_environment

CONFIGS = sorted((REPO_ROOT / "configs" / "accelerate").glob("*.yaml"))


def test_one_and_two_machine_configs_for_every_engine_are_shipped():
    names = {path.stem for path in CONFIGS}
    engines = ("ddp", "fsdp2", "zero2", "zero3")
    assert names == {f"{engine}-{n}node-8gpu" for engine in engines for n in (1, 2)}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_accelerate_reads_the_config_and_it_asks_for_what_congrad_supports(path):
    config = ClusterConfig.from_yaml_file(str(path))
    machines = 2 if "2node" in path.stem else 1
    assert (config.num_machines, config.num_processes) == (machines, 8 * machines)
    assert str(config.mixed_precision) == "no"  # train.mixed_precision decides
    assert not config.use_cpu
    if path.stem.startswith("fsdp2"):
        assert config.distributed_type == DistributedType.FSDP
        assert config.fsdp_config["fsdp_version"] == 2  # version 1 is refused by train_round
        assert config.fsdp_config["fsdp_activation_checkpointing"] is False
    elif path.stem.startswith("zero"):
        assert config.distributed_type == DistributedType.DEEPSPEED
        assert config.deepspeed_config["zero_stage"] == int(path.stem[4])
        assert config.deepspeed_config["gradient_accumulation_steps"] == 1  # congrad.parallel.zero
        assert config.deepspeed_config["zero3_init_flag"] is False  # models load whole
        if machines > 1:  # each machine runs accelerate launch itself, as with DDP
            assert config.deepspeed_config["deepspeed_multinode_launcher"] == "standard"
    else:
        assert config.distributed_type == DistributedType.MULTI_GPU
    if machines > 1:
        assert config.main_process_ip and config.main_process_port
    # every command line in the header runs congrad as a module through accelerate launch
    header = [line for line in path.read_text().splitlines() if "accelerate launch" in line]
    assert header and all(path.name in line for line in header)


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.stem.startswith("zero")], ids=str)
def test_deepspeed_configs_launch_ranks_that_congrad_drives_through_zero(path, monkeypatch):
    env = accelerate_launch_environment(path)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == path.stem[4]
    assert env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "false"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert zero.requested()
    # accelerate's plugin, built from that environment, gives a config congrad can fill
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin()
    zero.configure(plugin.deepspeed_config, TrainConfig(batch_size=16), world=16)
    assert plugin.deepspeed_config["train_micro_batch_size_per_gpu"] == 1
    assert plugin.deepspeed_config["zero_optimization"]["stage"] == int(path.stem[4])
