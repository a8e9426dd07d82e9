"""Fixtures shared by the test modules; the helpers they share are in support.py."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from support import ROOT, SHARED, make_mnist

CLUSTER = ROOT / "tests" / "slurm" / "local_slurm.sh"


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory) -> Path:
    return make_mnist(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="session")
def tiny_classifier(mnist_root, tmp_path_factory):
    """Trained for one epoch on the small fake IDX set: enough for plumbing, not for quality."""
    from evaluation.classifier import save_classifier, train_classifier
    model, _ = train_classifier(mnist_root, epochs=1, batch_size=64, log=lambda *_: None)
    return save_classifier(model, tmp_path_factory.mktemp("classifier"))


@pytest.fixture(scope="session")
def real_classifier(tmp_path_factory):
    """A real judge, trained as `python -m evaluation.classifier` trains it but for 2 epochs instead of 3 (99.2%
    instead of 99.35% test accuracy, measured 2026-11-24; one epoch falls short of 99%): the suite's longest set-up."""
    from evaluation.classifier import save_classifier, train_classifier
    if not (SHARED / "data" / "MNIST" / "raw").is_dir():
        pytest.skip("real MNIST (../shared) absent")
    model, acc = train_classifier(SHARED / "data", epochs=2, log=lambda *_: None)
    assert acc >= 0.99
    return save_classifier(model, tmp_path_factory.mktemp("real_classifier"))


@pytest.fixture(scope="session")
def slurm_env():
    """A real SLURM cluster of 2 nodes in their own network namespaces (tests/slurm/local_slurm.sh), shared by
    the SLURM tests and the README test; skips where it cannot start (not root, no apt, no namespaces)."""
    if os.geteuid() != 0:
        pytest.skip("SLURM tests start daemons and network namespaces: they need root")
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        pytest.skip("SLURM is not installed and apt-get is not available to install it")
    env = dict(os.environ, LS_MODE="netns")
    started = subprocess.run(["bash", str(CLUSTER), "start"], env=env, capture_output=True, text=True, timeout=600)
    if started.returncode != 0:
        pytest.skip(f"could not start the local SLURM cluster: {(started.stderr or started.stdout).strip().splitlines()[-1:]}")
    conf = subprocess.run(["bash", str(CLUSTER), "env"], env=env, capture_output=True, text=True).stdout
    env["SLURM_CONF"] = conf.strip().split("=", 1)[1]
    env["PYTHON"] = sys.executable          # the launcher runs the trainer with this interpreter
    env["PYTHONUNBUFFERED"] = "1"
    yield env
    subprocess.run(["bash", str(CLUSTER), "stop"], env=env, capture_output=True, timeout=120)


def pytest_configure(config):
    """Each pytest-xdist worker's own torch work (the judges conftest trains, in-process Trainers) gets its share of
    the cores: torch's default, one thread per core in every worker, has the workers' OpenMP threads fight over the
    same cores (BENCHMARKS.md, "The test suite's time"). The trainers tests start run on one thread each already
    (support.subprocess_env)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def pytest_itemcollected(item):
    """pytest-xdist runs the suite on 2 workers (pytest.ini: --dist loadgroup). Each module's tests stay on one
    worker, in order, so a module fixture (a short training run, the README's scratch checkout) is built once; the
    modules that start the local SLURM cluster share one worker, since one cluster can run on a machine at a time,
    and so do the modules that judge with real_classifier, which then trains once.
    (Marked as each test is collected: xdist reads the groups in its own collection hook.)"""
    module = item.module.__name__
    item.add_marker(pytest.mark.xdist_group(SHARED_WORKER.get(module, module)))


SHARED_WORKER = {"test_slurm": "slurm", "test_readme": "slurm", "test_pretrained": "real_classifier",
                 "test_evaluation": "real_classifier", "test_quality": "real_classifier"}
