"""The shipped ``accelerate launch`` configs load with accelerate's own reader and ask for
what congrad's trainer supports (DDP or FSDP version 2, 8 GPUs per machine, mixed precision
left to congrad's ``train.mixed_precision``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.utils import DistributedType

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs" / "accelerate").glob("*.yaml"))


def test_one_and_two_machine_configs_for_ddp_and_fsdp2_are_shipped():
    names = {path.stem for path in CONFIGS}
    assert names == {"ddp-1node-8gpu", "ddp-2node-8gpu", "fsdp2-1node-8gpu", "fsdp2-2node-8gpu"}


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
    else:
        assert config.distributed_type == DistributedType.MULTI_GPU
    if machines > 1:
        assert config.main_process_ip and config.main_process_port
    # every command line in the header runs congrad as a module through accelerate launch
    header = [line for line in path.read_text().splitlines() if "accelerate launch" in line]
    assert header and all(path.name in line for line in header)
