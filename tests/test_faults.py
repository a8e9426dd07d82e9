"""Faults end in one line and lose nothing: a full disk (checkpoint, sample grid, log), a kill while a checkpoint is
written, a file size limit, an unreadable newest checkpoint, two runs on one run dir."""
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from support import (ROOT, TINY, assert_same_state, load_ckpt, one_line_error, only_run_dir, run_train,
                     subprocess_env, train_command)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB filesystem of its own (tmpfs; needs root), unmounted afterwards."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {mounted.stderr.decode().strip()[:200]}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(folder: Path) -> None:
    """Write a filler file until the filesystem is full."""
    try:
        with open(folder / "filler", "wb") as fh:
            while True:
                fh.write(b"\0" * 4096)
                fh.flush()
    except OSError:
        pass


def temp_files(run_dir: Path) -> list[Path]:
    return [p for p in Path(run_dir).rglob(".*.tmp*")]


def test_disk_full_while_writing_checkpoints(small_disk, mnist_root):
    """Checkpoints every step on a 1 MiB disk: the one that does not fit ends the run in one line naming it; the
    ones before it are intact, no temp file is left, and with space freed the run resumes from the newest."""
    common = TINY + [f"data.root={mnist_root}", f"train.out_dir={small_disk}", "train.epochs=100",
                     "train.checkpoint_every=1"]
    failed = run_train(common + ["train.keep_last=1000"], check=False)
    line = one_line_error(failed)
    run_dir = only_run_dir(small_disk)
    written = sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))
    assert written, line
    next_step = int(written[-1].stem.split("-")[1]) + 1
    assert line == (f"error: No space left on device writing {run_dir}/checkpoints/ckpt-{next_step:08d}.pt: free "
                    f"space there or set train.out_dir to another disk; the last checkpoint written is intact and "
                    f"train.resume=latest continues from it")
    assert not temp_files(run_dir)
    newest = load_ckpt(run_dir)
    for old in written[:-1]:
        old.unlink()                                              # the user frees space
    resumed = run_train(common + ["train.keep_last=1", "train.resume=latest", f"train.max_steps={next_step + 1}"])
    assert f"resumed from {written[-1]} at step {newest['step']}" in resumed.stdout + resumed.stderr
    assert load_ckpt(run_dir)["step"] == next_step + 1


def test_disk_full_while_writing_sample_grids(small_disk, mnist_root, tmp_path):
    """The grids go to a full disk (samples/ links there); checkpoints fit. The write fails in the background
    thread; the run ends in one line naming the PNG, after the epoch's checkpoint, with no partial PNG left."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (small_disk / "samples").mkdir()
    (run_dir / "samples").symlink_to(small_disk / "samples")
    fill(small_disk)
    result = run_train(TINY + [f"data.root={mnist_root}", f"train.run_dir={run_dir}", "train.epochs=1"], check=False)
    line = one_line_error(result)
    assert line.startswith(f"error: No space left on device writing {run_dir}/samples/samples_") and ".png:" in line
    assert load_ckpt(run_dir)["step"] == 16 and not temp_files(run_dir) and not temp_files(small_disk)


def test_disk_full_while_writing_the_log(mnist_root, tmp_path):
    """train.log on a device that is always full (/dev/full): one line naming it."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "train.log").symlink_to("/dev/full")
    result = run_train(TINY + [f"data.root={mnist_root}", f"train.run_dir={run_dir}", "train.max_steps=2"],
                       check=False)
    assert one_line_error(result).startswith(f"error: No space left on device writing {run_dir}/train.log: ")


def limit_file_size(limit: int):
    """A preexec_fn: the child's files may not grow past `limit` bytes (RLIMIT_FSIZE, `ulimit -f`; no root needed)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_file_size_limit_while_writing_a_checkpoint(mnist_root, tmp_path):
    """A write that fails without root: the file size limit stops the 2nd checkpoint halfway (EFBIG, as a quota or
    a full disk stops it). One line naming it and the way out; the 1st is intact, no partial file is left anywhere,
    and without the limit resume=latest continues from the 1st."""
    common = TINY + [f"data.root={mnist_root}", f"train.out_dir={tmp_path}", "train.epochs=100",
                     "train.checkpoint_every=4", "train.keep_last=100"]
    run_train(common + ["train.max_steps=4"])
    run_dir = only_run_dir(tmp_path)
    first = run_dir / "checkpoints" / "ckpt-00000004.pt"
    limited = subprocess.run(train_command(common + ["train.resume=latest", "train.max_steps=8"]), cwd=ROOT,
                             env=subprocess_env(), capture_output=True, text=True, timeout=300,
                             preexec_fn=limit_file_size(first.stat().st_size // 2))
    assert one_line_error(limited) == (
        f"error: File too large writing {run_dir}/checkpoints/ckpt-00000008.pt: raise the file size limit "
        f"(ulimit -f) or set train.out_dir to another disk; the last checkpoint written is intact and "
        f"train.resume=latest continues from it")
    assert [p.name for p in (run_dir / "checkpoints").glob("ckpt-*.pt")] == [first.name]
    assert load_ckpt(run_dir)["step"] == 4 and not temp_files(run_dir)
    resumed = run_train(common + ["train.resume=latest", "train.max_steps=8"])
    assert f"resumed from {first} at step 4" in resumed.stdout + resumed.stderr


def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(mnist_root, tmp_path):
    """The real writer killed halfway through the 3rd checkpoint (the kernel's SIGXFSZ at the file size limit,
    tests/helpers/kill_while_saving.py): the 2nd is intact and every file under a checkpoint's name loads,
    resume=latest continues from the 2nd (and ends where an uninterrupted run ends), and the partial temp file is
    cleaned away."""
    common = TINY + [f"data.root={mnist_root}", "train.epochs=100", "train.checkpoint_every=4", "train.max_steps=16",
                     "train.keep_last=100"]
    run_train(common + [f"train.out_dir={tmp_path / 'straight'}"])
    killed_out = [f"train.out_dir={tmp_path / 'killed'}"]
    run_train(common + killed_out + ["train.max_steps=8"])               # the last value of a key wins
    run_dir = only_run_dir(tmp_path / "killed")
    half = (run_dir / "checkpoints" / "ckpt-00000008.pt").stat().st_size // 2
    killed = subprocess.run([sys.executable, "tests/helpers/kill_while_saving.py", str(half), *common, *killed_out,
                             "train.resume=latest"], cwd=ROOT, env=subprocess_env(), capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -signal.SIGXFSZ, killed.stderr[-2000:]
    [partial] = temp_files(run_dir)                                # killed inside the write, not before or after
    assert partial.name.startswith(".ckpt-00000012.pt.tmp") and partial.stat().st_size == half
    checkpoints = sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))
    assert [p.name for p in checkpoints] == ["ckpt-00000004.pt", "ckpt-00000008.pt"]
    assert [load_ckpt(run_dir, int(p.stem.split("-")[1]))["step"] for p in checkpoints] == [4, 8]
    resumed = run_train(common + killed_out + ["train.resume=latest"])
    assert f"resumed from {run_dir}/checkpoints/ckpt-00000008.pt at step 8" in resumed.stdout + resumed.stderr
    assert_same_state(load_ckpt(only_run_dir(tmp_path / "straight"), 16), load_ckpt(run_dir, 16))
    assert not temp_files(run_dir)


def test_unreadable_newest_checkpoint_is_passed_over(mnist_root, tmp_path):
    common = TINY + [f"data.root={mnist_root}", f"train.out_dir={tmp_path}", "train.epochs=100",
                     "train.checkpoint_every=4", "train.keep_last=100"]
    run_train(common + ["train.max_steps=8"])
    run_dir = only_run_dir(tmp_path)
    newest = run_dir / "checkpoints" / "ckpt-00000008.pt"
    newest.write_bytes(newest.read_bytes()[:3000])                       # truncated, as a disk fault leaves it
    result = run_train(common + ["train.resume=latest", "train.max_steps=12"])
    log = (run_dir / "train.log").read_text()
    assert f"checkpoint {newest} is unreadable or truncated: resuming from the newest readable one" in log
    assert f"resumed from {run_dir}/checkpoints/ckpt-00000004.pt at step 4" in result.stdout + result.stderr
    assert load_ckpt(run_dir, 12)["step"] == 12
    for path in (run_dir / "checkpoints").glob("ckpt-*.pt"):
        path.write_bytes(b"not a checkpoint")
    assert "no readable checkpoint in" in one_line_error(run_train(common + ["train.resume=latest"], check=False))


def test_second_run_on_the_same_run_dir_is_refused(mnist_root, tmp_path):
    run_dir = tmp_path / "run"
    common = TINY + [f"data.root={mnist_root}", f"train.run_dir={run_dir}", "train.resume=latest",
                     "train.epochs=1000", "train.checkpoint_every=8"]
    first = subprocess.Popen(train_command(common), cwd=ROOT, env=subprocess_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not list((run_dir / "checkpoints").glob("ckpt-*.pt")):
            assert first.poll() is None and time.time() < deadline, "the first run never checkpointed"
            time.sleep(0.05)
        second = run_train(common, check=False)
        line = one_line_error(second)
        assert line.startswith(f"error: run dir {run_dir} is in use by another training run (pid {first.pid} on ")
        assert first.poll() is None                                   # the first goes on, undisturbed
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=60)
    finally:
        first.kill()
    assert first.returncode == 128 + signal.SIGTERM
    log = (run_dir / "train.log").read_text()
    assert log.count("run dir ") == 1 and "stopping at step" in log   # only the first run wrote there
    stopped_at = int(log.split("stopping at step ")[1].split()[0])
    assert load_ckpt(run_dir)["step"] == stopped_at
    # and once it has ended, the run dir is free again
    run_train(common + [f"train.max_steps={stopped_at + 1}"])
    final = load_ckpt(run_dir)
    assert final["step"] == stopped_at + 1
    exported = torch.load(run_dir / "generator.pt", weights_only=True)              # the run's EMA generator
    assert list(exported) == list(final["ema"]) and all(torch.equal(v, final["ema"][k]) for k, v in exported.items())
