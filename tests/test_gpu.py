"""CUDA code paths, on a machine with a GPU: fp16 with loss scaling, the CUDA noise generator's state across a
resume, and torch.nn.SyncBatchNorm across processes. Skipped without CUDA (CI has none)."""
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY, load_ckpt, only_run_dir, run_train
from test_distributed import check_synced_batchnorm

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

ON_GPU = [o for o in TINY if o != "train.cpu=true"] + ["train.cpu=false"]


def finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_fp16_training_with_loss_scaling(mnist_root, tmp_path):
    run_train(ON_GPU + [f"data.root={mnist_root}", f"train.out_dir={tmp_path}", "train.epochs=2",
                        "train.mixed_precision=fp16"])
    run_dir = only_run_dir(tmp_path)
    assert "1 process(es) on cuda" in (run_dir / "train.log").read_text()
    state = load_ckpt(run_dir)
    assert state["step"] == 32 and finite(state["generator"]) and finite(state["discriminator"])
    assert state["scaler"] is not None and state["scaler"]["scale"] > 0
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    assert "amp/loss_scale" in events.Tags()["scalars"]


def test_resume_on_gpu_continues_the_cuda_noise_stream(mnist_root, tmp_path):
    common = ON_GPU + [f"data.root={mnist_root}", "train.epochs=100", "train.max_steps=20", "train.keep_last=100"]
    run_train(common + [f"train.out_dir={tmp_path / 'straight'}"])
    straight = load_ckpt(only_run_dir(tmp_path / "straight"), 20)
    run_train(common + [f"train.out_dir={tmp_path / 'halves'}", "train.max_steps=10"])
    run_train(common + [f"train.out_dir={tmp_path / 'halves'}", "train.resume=latest"])
    resumed = load_ckpt(only_run_dir(tmp_path / "halves"), 20)
    assert resumed["rng"]["noise"].device.type == "cpu"    # torch.Generator state is a CPU byte tensor
    assert torch.equal(resumed["rng"]["noise"], straight["rng"]["noise"])
    # cuDNN's autotuned kernels may differ in rounding between processes: close, not necessarily bit-equal.
    gap = max((resumed["generator"][k].float() - v.float()).abs().max().item()
              for k, v in straight["generator"].items() if v.is_floating_point())
    print(f"max |G param| gap, resumed vs straight: {gap:.2e}")
    assert gap < 1e-2


def test_cuda_syncbatchnorm_two_processes_match_one(tmp_path):
    check_synced_batchnorm("cuda", "SyncBatchNorm", tmp_path)
