"""Draw digits with a trained generator: a grid, one PNG per sample, a latent walk, or a run's training progress.

    python -m dcgan.generate --checkpoint runs/000-mnist64 --num 64 --out grid.png
    python -m dcgan.generate --checkpoint runs/000-mnist64/generator.safetensors --num 16 --out-dir digits
    python -m dcgan.generate --checkpoint runs/000-mnist64 --num 16 --interpolate 24 --out walk.gif
    python -m dcgan.generate --progress runs/000-mnist64 --out progress.gif

--checkpoint takes a run dir (its latest checkpoint), a ckpt-*.pt or an exported generator.pt/.safetensors; the
EMA generator draws unless --no-ema. --seed fixes the noise; --truncation T redraws every noise value beyond +-T
(the truncation trick: fewer, more typical digits). --interpolate K walks through 4 random points of the latent
space and back, K frames between each two (spherical interpolation), every sample of the grid at once.
--progress animates a run's per-epoch fixed-noise grids (samples/samples_ema-*.png). Animations are GIFs or MP4s
(imageio; MP4 through imageio-ffmpeg). --digit D draws only D with a conditional model; without it a conditional
model's grid has one column per digit.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from dcgan.generators import DIGITS, ModelFileError, open_generator

MAX_NUM = 4096          # samples per call: more is a mistake on the command line, not a use
WALK_KEYFRAMES = 4
MAX_SEED = 2**63 - 1    # a signed 64-bit seed, as most tools take one
PADDING = 2             # pixels between a grid's images (and round it), white, as torchvision's make_grid


class GenerateError(ValueError):
    """A user-facing mistake; the message is one line."""


def sample_noise(num: int, nz: int, seed: int, truncation: float = 0.0) -> np.ndarray:
    """N(0, 1) noise (float32) from its own seeded generator; with truncation T > 0, values beyond +-T are
    redrawn. numpy's, so that a PyTorch and an ONNX generator draw the same digits for the same seed."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((num, nz), dtype=np.float32)
    while truncation > 0 and (outside := np.abs(z) > truncation).any():
        z[outside] = rng.standard_normal(int(outside.sum()), dtype=np.float32)
    return z


def slerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    """Spherical interpolation per row: Gaussian noise keeps its typical norm along the way (a straight line
    passes through the low-norm middle, where samples are atypical)."""
    cos = (a * b).sum(1, keepdims=True) / (np.linalg.norm(a, axis=1, keepdims=True) *
                                          np.linalg.norm(b, axis=1, keepdims=True))
    omega = np.arccos(np.clip(cos, -1 + 1e-7, 1 - 1e-7))
    return ((np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / np.sin(omega)).astype(np.float32)


def walk_noise(num: int, nz: int, seed: int, frames_between: int, truncation: float) -> list[np.ndarray]:
    """The noise of every frame of a closed walk through WALK_KEYFRAMES random points."""
    keys = [sample_noise(num, nz, seed + k, truncation) for k in range(WALK_KEYFRAMES)]
    return [slerp(keys[k], keys[(k + 1) % WALK_KEYFRAMES], i / frames_between)
            for k in range(WALK_KEYFRAMES) for i in range(frames_between)]


def digits_to_draw(num: int, digit: int | None, conditional: bool) -> tuple[np.ndarray, int]:
    """(labels, images per grid row): `digit` for every sample; else for a conditional model 0-9 in turn, one
    column per digit once there are 10 or more; otherwise a square grid (an unconditional model ignores labels)."""
    square = max(1, int(num ** 0.5))
    if digit is not None:
        return np.full(num, digit, dtype=np.int64), square
    return np.arange(num, dtype=np.int64) % DIGITS, (DIGITS if conditional and num >= DIGITS else square)


def to_pixels(images: np.ndarray) -> np.ndarray:
    """[-1, 1] images (N, C, H, W) -> uint8 (N, H, W, 3), grey repeated to RGB."""
    pixels = np.round(np.clip((images.astype(np.float32) + 1) / 2, 0, 1) * 255).astype(np.uint8)
    return np.repeat(pixels, 3 // pixels.shape[1], axis=1).transpose(0, 2, 3, 1)


def to_grid(images: np.ndarray, nrow: int) -> np.ndarray:
    """[-1, 1] images -> one uint8 (H, W, 3) grid, `nrow` images per row, white between and around them: the
    layout of the run's own sample grids (torchvision's make_grid)."""
    pixels = to_pixels(images)
    count, height, width = pixels.shape[:3]
    columns, rows = min(nrow, count), -(-count // min(nrow, count))
    grid = np.full((rows * (height + PADDING) + PADDING, columns * (width + PADDING) + PADDING, 3), 255, np.uint8)
    for i, image in enumerate(pixels):
        top, left = (i // columns) * (height + PADDING) + PADDING, (i % columns) * (width + PADDING) + PADDING
        grid[top:top + height, left:left + width] = image
    return grid


def write_animation(frames: list[np.ndarray], out: Path, fps: float) -> None:
    """A GIF (looping), or an H.264 MP4 (imageio's ffmpeg plugin) for the suffix .mp4."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() != ".mp4":
        iio.imwrite(out, np.stack(frames), duration=1000 / fps, loop=0)
        return
    height, width = frames[0].shape[:2]  # H.264's yuv420p needs even sides: pad with the grids' white border
    frames = [np.pad(f, ((0, height % 2), (0, width % 2), (0, 0)), constant_values=255) for f in frames]
    iio.imwrite(out, np.stack(frames), plugin="FFMPEG", fps=fps, codec="libx264", macro_block_size=1)


def draw(args) -> str:
    """The generator's part: a grid, single PNGs or a latent walk. Returns what was written."""
    G = open_generator(args.checkpoint, not args.no_ema, args.device)
    if args.digit is not None and not G.conditional:
        raise GenerateError("--digit: this generator is unconditional (its run has no model.conditional); "
                            "it draws random digits: leave --digit out")
    labels, nrow = digits_to_draw(args.num, args.digit, G.conditional)
    if args.interpolate:
        frames = [to_grid(G(z, labels), nrow) for z in walk_noise(args.num, G.nz, args.seed, args.interpolate,
                                                                  args.truncation)]
        write_animation(frames, Path(args.out), args.fps)
        return f"{args.out}: a latent walk of {len(frames)} frames, {args.num} samples each"
    images = G(sample_noise(args.num, G.nz, args.seed, args.truncation), labels)
    if args.out_dir:
        folder = Path(args.out_dir)
        folder.mkdir(parents=True, exist_ok=True)
        for i, pixels in enumerate(to_pixels(images)):
            iio.imwrite(folder / f"sample-{i:05d}.png", pixels)
        return f"{folder}: {args.num} PNGs"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(args.out, to_grid(images, nrow))
    return f"{args.out}: a grid of {args.num} samples"


def progress(args) -> str:
    """A run's per-epoch EMA grids as an animation, oldest first."""
    grids = sorted((Path(args.progress) / "samples").glob("samples_ema-*.png"))
    if not grids:
        raise GenerateError(f"--progress: {args.progress} has no samples/samples_ema-*.png (is it a run directory?)")
    write_animation([iio.imread(path)[..., :3] for path in grids], Path(args.out), args.fps)
    return f"{args.out}: {len(grids)} frame(s), one per epoch of {args.progress}"


def check(args) -> None:
    """Every mistake in the arguments, before any work."""
    if (args.checkpoint is None) == (args.progress is None):
        raise GenerateError("give --checkpoint (draw with a generator) or --progress (animate a run), not both")
    if not 1 <= args.num <= MAX_NUM:
        raise GenerateError(f"--num {args.num}: draw 1 to {MAX_NUM} samples")
    if args.digit is not None and not 0 <= args.digit <= 9:
        raise GenerateError(f"--digit {args.digit}: digits are 0 to 9")
    if not 0 <= args.seed <= MAX_SEED:
        raise GenerateError(f"--seed {args.seed}: seeds are 0 to {MAX_SEED} (2^63 - 1)")
    if args.truncation < 0 or args.interpolate < 0 or args.fps <= 0:
        raise GenerateError("--truncation and --interpolate take 0 (off) or a positive value, --fps a positive one")
    animated = bool(args.interpolate or args.progress)
    if args.out_dir and animated:
        raise GenerateError("--out-dir writes single PNGs: an animation (--interpolate, --progress) needs --out "
                            "FILE.gif or FILE.mp4")
    if not args.out_dir and not args.out:
        raise GenerateError("say where to write: --out FILE (or --out-dir DIR for one PNG per sample)")
    wanted = (".gif", ".mp4") if animated else (".png", ".jpg", ".jpeg")
    if args.out and Path(args.out).suffix.lower() not in wanted:
        raise GenerateError(f"--out {args.out}: {'an animation' if animated else 'a grid'} is written as "
                            f"{' or '.join(wanted)}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="run dir, ckpt-*.pt, or exported generator.pt / .safetensors / .onnx")
    parser.add_argument("--progress", help="a run dir: animate its per-epoch sample grids")
    parser.add_argument("--num", type=int, default=64, help="samples (default 64)")
    parser.add_argument("--out", help="the grid (.png) or animation (.gif) to write")
    parser.add_argument("--out-dir", help="write one PNG per sample here instead of a grid")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise (default 0)")
    parser.add_argument("--truncation", type=float, default=0.0, help="redraw noise beyond +-T (0: off)")
    parser.add_argument("--digit", type=int, default=None, help="0-9: that digit only (conditional models)")
    parser.add_argument("--interpolate", type=int, default=0, help="K: a latent walk, K frames between points")
    parser.add_argument("--fps", type=float, default=8.0, help="frames per second of an animation (default 8)")
    parser.add_argument("--no-ema", action="store_true", help="draw with the raw generator instead of its EMA")
    parser.add_argument("--device", default="auto", help="PyTorch generators: cpu, cuda, ... (auto: the GPU if any)")
    args = parser.parse_intermixed_args(argv)
    try:
        check(args)
        print(progress(args) if args.progress else draw(args))
    except (GenerateError, ModelFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
