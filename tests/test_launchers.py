"""The launchers of launch/: each Accelerate config file read by Accelerate's own loader, and two "nodes" on one
machine (two launcher invocations, node ranks 0 and 1). launch/torchrun.sh's two-node form is the README's, run by
tests/test_readme.py."""
import os
import socket
import subprocess
import sys

import pytest

from support import ROOT, TINY, load_ckpt, only_run_dir, subprocess_env

pytestmark = pytest.mark.distributed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_nodes(commands_env: list[tuple[list[str], dict]], timeout: int = 300) -> None:
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cmd, env in commands_env]
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-4000:]


LAUNCH_CONFIGS = {
    "accelerate_1gpu.yaml": dict(distributed_type="NO", num_machines=1, num_processes=1, mixed_precision="no",
                                 gpu_ids="0", use_cpu=False),
    "accelerate_multigpu_fp16.yaml": dict(distributed_type="MULTI_GPU", num_machines=1, mixed_precision="fp16",
                                          gpu_ids="all", use_cpu=False),
    "accelerate_multinode.yaml": dict(distributed_type="MULTI_GPU", num_machines=2, num_processes=16,
                                      mixed_precision="fp16", rdzv_backend="static", use_cpu=False),
}


def test_every_launch_config_is_listed():
    assert sorted(p.name for p in (ROOT / "launch").glob("*.yaml")) == sorted(LAUNCH_CONFIGS)


@pytest.mark.parametrize("name", sorted(LAUNCH_CONFIGS))
def test_launch_config_loads_with_accelerates_own_loader(name):
    """What `accelerate launch --config_file` reads (GPU-only files: the README test parses their commands only)."""
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
    config = load_config_from_file(str(ROOT / "launch" / name))
    assert isinstance(config, ClusterConfig)
    expected = LAUNCH_CONFIGS[name]
    assert {key: getattr(config, key) for key in expected} == expected


def test_accelerate_multinode_config_two_cpu_machines(mnist_root, tmp_path):
    port = free_port()
    overrides = TINY + [f"data.root={mnist_root}", f"train.out_dir={tmp_path}", "train.max_steps=6"]
    accelerate = os.path.join(os.path.dirname(sys.executable), "accelerate")
    nodes = []
    for rank in (0, 1):
        cmd = [accelerate, "launch", "--config_file", "launch/accelerate_multinode.yaml", "--cpu",
               "--num_machines", "2", "--machine_rank", str(rank), "--num_processes", "2",
               "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--mixed_precision", "no",
               "train_ddp.py", *overrides]
        # CPU machines: Accelerate reads each process's rank from RANK/WORLD_SIZE (as MPI or srun would set)
        nodes.append((cmd, dict(subprocess_env(), RANK=str(rank), WORLD_SIZE="2")))
    run_nodes(nodes)
    run_dir = only_run_dir(tmp_path)
    assert "2 process(es) on cpu" in (run_dir / "train.log").read_text()
    assert load_ckpt(run_dir)["step"] == 6
