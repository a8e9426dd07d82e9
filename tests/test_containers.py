"""Containerfile and Containerfile.serve, built and run with Podman as the README's "Containers" section does (slow
tier). No registry is reachable here, so the base image is made on the spot: Debian's minbase with python3 from
the mirror apt already uses (debootstrap), imported into Podman, then passed as --build-arg BASE. pip inside the
build reaches what the host's pip reaches: the host's pip settings, CA bundle, local indexes and cache, mounted."""
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support import ROOT, SHARED, fetch_when_up, free_port
from test_readme import COMMANDS

pytestmark = pytest.mark.slow
# The README's "Containers" lines, in its order: build, train, build the page, serve (test_readme checks they are
# the README's); each runs here as written, with what this machine needs added (build_line, run_line).
BUILD_TRAIN, RUN_TRAIN, BUILD_SERVE, RUN_SERVE = (shlex.split(c.text) for c in COMMANDS if c.how == "container")

BASE = "localhost/dcgan-test-base:bookworm"
# What works on these VMs (crun refuses their hybrid cgroup layout; the default ulimits are not granted).
CONTAINERS_CONF = '[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n'


def run(args: list[str], env: dict, timeout: int = 1800, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


def apt_mirror() -> tuple[str, str]:
    """(mirror URL, suite) of the first Debian source apt uses, deb822 (.sources) or one-line form."""
    for path in sorted(Path("/etc/apt").glob("sources.list.d/*.sources")):
        text = path.read_text()
        uris, suites = re.search(r"^URIs:\s*(\S+)", text, re.M), re.search(r"^Suites:\s*(\S+)", text, re.M)
        if uris and suites and "security" not in uris.group(1):
            return uris.group(1), suites.group(1)
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt").glob("sources.list.d/*.list"))]:
        for line in path.read_text().splitlines() if path.is_file() else []:
            words = line.split()
            if words[:1] == ["deb"] and "security" not in line:
                words = [w for w in words if not w.startswith("[")]
                return words[1], words[2]
    pytest.skip("no Debian mirror in apt's sources for debootstrap")


def pip_mounts(folder: Path) -> list[str]:
    """podman build --volume options: a pip.conf holding the host's global pip settings (and its CA bundle), and
    every local path those settings name, each read-only at its own path; plus the host's pip cache."""
    listed = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    settings = dict(re.findall(r"^(?:global|:env:)\.([\w-]+)='(.*)'$", listed, re.M))
    settings.setdefault("cert", "/etc/ssl/certs/ca-certificates.crt")
    (folder / "pip.conf").write_text("[global]\n" + "".join(f"{k} = {v}\n" for k, v in settings.items()))
    # a file:// index is <root>/simple, whose pages link to files beside it: mount <root>
    paths = {str(Path(p[len("file://"):]).parent) if p.startswith("file://") else p
             for value in settings.values() for p in value.split() if p.startswith(("/", "file:///"))}
    cache = Path.home() / ".cache" / "pip"
    cache.mkdir(parents=True, exist_ok=True)
    mounts = [f"{folder / 'pip.conf'}:/etc/pip.conf:ro", f"{cache}:/root/.cache/pip"]
    return mounts + [f"{p}:{p}:ro" for p in sorted(paths) if Path(p).exists()]


@pytest.fixture(scope="module")
def podman(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("building images with Podman here needs root")
    if not all(shutil.which(tool) for tool in ("podman", "debootstrap", "runc")):
        if not shutil.which("apt-get"):
            pytest.skip("podman, debootstrap or runc missing, and no apt-get to install them")
        installed = subprocess.run(["apt-get", "install", "-y", "-q", "podman", "debootstrap", "runc"],
                                   env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"), capture_output=True,
                                   text=True, timeout=900)
        if installed.returncode != 0:
            pytest.skip(f"could not install podman: {installed.stderr.strip().splitlines()[-1:]}")
    folder = tmp_path_factory.mktemp("podman")
    (folder / "containers.conf").write_text(CONTAINERS_CONF)
    env = dict(os.environ, CONTAINERS_CONF=str(folder / "containers.conf"))
    if run(["podman", "image", "exists", BASE], env).returncode != 0:
        mirror, suite = apt_mirror()
        rootfs = folder / "rootfs"
        made = run(["debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates", suite,
                    str(rootfs), mirror], env, timeout=900)
        if made.returncode != 0:
            pytest.skip(f"debootstrap failed: {made.stderr.strip().splitlines()[-1:]}")
        for clutter in ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/locale"):
            shutil.rmtree(rootfs / clutter, ignore_errors=True)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run(["podman", "import", "-", BASE], stdin=tar.stdout, env=env, capture_output=True,
                                  text=True, timeout=600)
        assert tar.wait() == 0 and imported.returncode == 0, imported.stderr
        shutil.rmtree(rootfs)
    volumes = [option for mount in pip_mounts(folder) for option in ("--volume", mount)]
    return {"env": env, "build": ["podman", "build", "--network=host", "--build-arg", f"BASE={BASE}", *volumes]}


def build(podman: dict, line: list[str]) -> float:
    """The README's build line with the base image, network and pip mounts inserted; returns the image's size in MB."""
    built = run([*podman["build"], *line[2:]], podman["env"], cwd=ROOT)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    inspected = run(["podman", "image", "inspect", line[line.index("-t") + 1]], podman["env"])
    return json.loads(inspected.stdout)[0]["Size"] / 1e6


def run_line(line: list[str], *options: str) -> list[str]:
    """The README's `podman run` line with `options` inserted after `run` and host networking for its ports."""
    if "-p" in line:
        at = line.index("-p")
        line = line[:at] + line[at + 2:]
    return [*line[:2], "--network=host", *options, *line[2:]]


def test_serve_image_serves_a_generator_onnx_without_torch(podman):
    started = time.time()
    size = build(podman, BUILD_SERVE)
    image = BUILD_SERVE[BUILD_SERVE.index("-t") + 1]
    print(f"serve image: {size:.0f} MB (base {BASE}), built in {time.time() - started:.0f} s")
    torch_there = run(["podman", "run", "--rm", "--entrypoint", "python", image, "-c",
                       "import importlib.util as u; print(u.find_spec('torch') is None)"], podman["env"])
    assert torch_there.stdout.strip() == "True", torch_there.stderr
    port = free_port()
    name = f"dcgan-serve-{port}"
    server = run([*run_line(RUN_SERVE, "-d", "--name", name), "--port", str(port)], podman["env"], cwd=ROOT)
    assert server.returncode == 0, server.stderr
    try:
        base = f"http://127.0.0.1:{port}"

        def check_alive():
            logs = run(["podman", "logs", name], podman["env"])
            assert logs.returncode == 0, "the container is gone (it stopped: run its image by hand to see why)"
        png = fetch_when_up(f"{base}/grid.png?digit=3&seed=1&count=16", check_alive)
        (Path(podman["env"]["CONTAINERS_CONF"]).parent / "grid.png").write_bytes(png)
        pixels = np.asarray(Image.open(Path(podman["env"]["CONTAINERS_CONF"]).parent / "grid.png"))
        assert pixels.shape == (4 * 34 + 2, 4 * 34 + 2, 3) and pixels.std() > 20      # digits, not a blank
        with pytest.raises(urllib.error.HTTPError) as bad:
            urllib.request.urlopen(f"{base}/grid.png?count=1000", timeout=10)
        assert bad.value.code == 400 and bad.value.read().decode() == "count must be 1 to 64, not 1000"
    finally:
        run(["podman", "rm", "-f", name], podman["env"])
        run(["podman", "rmi", "-f", image], podman["env"])


def test_training_image_trains_on_mounted_mnist(podman, tmp_path):
    if not (SHARED / "data" / "MNIST" / "raw").is_dir():
        pytest.skip("real MNIST (../shared) absent")
    started = time.time()
    size = build(podman, BUILD_TRAIN)
    image = BUILD_TRAIN[BUILD_TRAIN.index("-t") + 1]
    print(f"training image: {size:.0f} MB (base {BASE}), built in {time.time() - started:.0f} s")
    runs = tmp_path / "runs"                       # ./data and ./runs of the README's line, from here
    runs.mkdir()
    (tmp_path / "data").symlink_to(SHARED / "data")
    try:
        trained = run([*run_line(RUN_TRAIN), "train.max_steps=4", "train.log_every=2", "data.download=false"],
                      podman["env"], timeout=900, cwd=tmp_path)
        assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
        (run_dir,) = runs.iterdir()
        assert run_dir.name == "000-mnist32" and "done: 4 steps" in (run_dir / "train.log").read_text()
        assert (run_dir / "generator.safetensors").is_file() and list((run_dir / "checkpoints").glob("ckpt-*.pt"))
    finally:
        run(["podman", "rmi", "-f", image], podman["env"])
