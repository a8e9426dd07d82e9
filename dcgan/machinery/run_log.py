"""What a run tells its user (console and train.log lines, TensorBoard scalars and images, PNG grids, one JSON
line per epoch in epochs.jsonl for programs that watch a run), and its TensorBoard scalars read back (read_scalars:
reports and model cards use them).

Only the main process writes anything; every method is a no-op elsewhere.
"""
from __future__ import annotations

import io
import json
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import torch
from torchvision.utils import make_grid, save_image
from tqdm.auto import tqdm

from dcgan.machinery.checkpoint import atomic_write
from dcgan.models import NUM_CLASSES, balanced_labels

class RunLog:
    """`background`: sample grids are PNG-encoded twice (file, TensorBoard), a fixed cost per epoch end that a GPU
    would sit idle for, so by default one background thread writes them while training goes on."""

    def __init__(self, accelerator, run_dir: Path, background: bool = True):
        self.accelerator = accelerator
        self.run_dir = Path(run_dir)
        self.enabled = accelerator.is_main_process
        self._file = open(self.run_dir / "train.log", "a", buffering=1) if self.enabled else None
        self._bar = None
        self._image_writer = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="grids")
                              if self.enabled and background else None)
        self._images_pending: Future | None = None

    def info(self, message: str) -> None:
        if not self.enabled:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {message}"
        try:
            self._file.write(line + "\n")
        except OSError as exc:  # a full disk: name the file, and drop what cannot be written (no noise at exit)
            self._discard_file()
            raise OSError(exc.errno, exc.strerror, str(self.run_dir / "train.log")) from None
        tqdm.write(line)

    def _discard_file(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass

    def epoch(self, record: dict) -> None:
        """One line of epochs.jsonl (epoch, step, seconds of training, the health verdict, the evaluation if one
        ran), written at once: a search worker decides from it whether to prune the run (experiments.search)."""
        if self.enabled:
            with open(self.run_dir / "epochs.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def progress(self, total: int, initial: int) -> None:
        self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=None if self.enabled else True)  # None: off when not a terminal (batch logs)

    def advance(self, postfix: dict | None = None) -> None:
        if self._bar is not None:
            self._bar.update(1)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)

    def scalars(self, values: dict, step: int) -> None:
        self.accelerator.log(values, step=step)  # the tracker itself only acts on the main process

    def image_grids(self, grids: dict[str, torch.Tensor], step: int) -> None:
        """Each grid (C, H, W) in [0, 1], on the CPU, goes to TensorBoard and to samples/<name>-<step>.png, written
        in the background; the previous grids are written first (and a failed write raises here)."""
        if not self.enabled:
            return
        self.wait_for_images()
        if any(tracker.name == "wandb" for tracker in self.accelerator.trackers):
            # In this thread: W&B drops what is logged at a step older than its last one.
            self.accelerator.get_tracker("wandb").log_images(
                {name: [grid.permute(1, 2, 0).numpy()] for name, grid in grids.items()}, step=step)
        if self._image_writer is None:
            self._write_grids(grids, step)
        else:
            self._images_pending = self._image_writer.submit(self._write_grids, grids, step)

    def _write_grids(self, grids: dict[str, torch.Tensor], step: int) -> None:
        writer = self.accelerator.get_tracker("tensorboard", unwrap=True)
        for name, grid in grids.items():
            writer.add_image(name, grid, global_step=step)
            png = io.BytesIO()
            save_image(grid, png, format="PNG")
            atomic_write(self.run_dir / "samples" / f"{name.replace('/', '_')}-{step:08d}.png", png.getbuffer())
        writer.flush()

    def wait_for_images(self) -> None:
        """Until the grids handed over so far are written (before the TensorBoard writer closes)."""
        pending, self._images_pending = self._images_pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        try:
            self.wait_for_images()
        finally:
            if self._image_writer is not None:
                self._image_writer.shutdown()
            if self._bar is not None:
                self._bar.close()
            if self._file is not None:
                self._file.close()


def _grid(images: torch.Tensor, nrow: int) -> torch.Tensor:
    return make_grid(images.float().cpu(), nrow=nrow, normalize=True, value_range=(-1, 1), pad_value=1.0)


@torch.no_grad()
def sample_grids(generator, ema, fixed_noise: torch.Tensor, labels: torch.Tensor, real: torch.Tensor,
                 nrow: int) -> dict[str, torch.Tensor]:
    """Fixed-noise grids of G and of its EMA (eval mode: BN running statistics), and real | fake side by side;
    `labels`: the digits a conditional model draws (grid_labels), `nrow` images per row."""
    was_training = generator.training
    generator.eval()
    fake = generator(fixed_noise, labels)
    fake_ema = ema(fixed_noise, labels)
    generator.train(was_training)
    n = min(len(real), len(fake_ema))
    real_grid, fake_grid = _grid(real[:n], nrow), _grid(fake_ema[:n], nrow)
    gap = torch.ones(3, real_grid.shape[1], 8)
    comparison = torch.cat([real_grid, gap, fake_grid], dim=2)  # real left, EMA fakes right
    return {"samples/generator": _grid(fake, nrow), "samples/ema": _grid(fake_ema, nrow),
            "samples/real_vs_fake": comparison}


def grid_labels(count: int, conditional: bool, device: torch.device | str) -> tuple[torch.Tensor, int]:
    """(labels, images per row) of a sample grid: `count` images in a square grid, or for a conditional model one
    row per digit 0-9, as many columns as `count` needs (count rounded up to a multiple of 10)."""
    if not conditional:
        return balanced_labels(count, device), max(1, int(count ** 0.5))
    per_row = -(-count // NUM_CLASSES)
    return torch.arange(NUM_CLASSES, device=device).repeat_interleave(per_row), per_row


def read_scalars(folder: Path) -> dict[str, tuple[list[int], list[float]]]:
    """tag -> (steps, values) from a run's TensorBoard event files, one value per step (the last one logged: a
    resumed run logs again the steps after its checkpoint)."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator
    if not folder.is_dir():
        return {}
    events = EventAccumulator(str(folder), size_guidance={SCALARS: 0})
    events.Reload()
    curves = {}
    for tag in events.Tags()["scalars"]:
        by_step = {e.step: e.value for e in events.Scalars(tag)}
        steps = sorted(by_step)
        curves[tag] = (steps, [by_step[s] for s in steps])
    return curves
