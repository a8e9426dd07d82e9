"""The README is a contract: every command in its shell code blocks is run here, as written, in README order.

Each command runs in a scratch copy of the repository whose `data/` holds a small IDX set of legible digits (a
classifier learns them, so the classifier command passes its own accuracy gate as written), with settings appended
where a command would train or sample for long: sizes (steps, model widths, sample counts) and the CPU, never
another code path. Where ../shared has the Inception weights, they sit where torch-fidelity looks for its own
($TORCH_HOME), so the evaluation commands run their own Inception metrics; without them, those rows measure
classifier metrics instead. How each command is tested is one row of COMMANDS; a README command without a row, or
a row whose command left the README, fails the suite. Commands quoted in the prose are rows of INLINE (at the end).
- run:   for real (SLURM forms on the local SLURM cluster, skipped where it cannot start);
- parse: GPU-only forms: the launcher's own parser takes its part (accelerate's parser; torchrun.sh runs), and
         train_ddp.py runs its part with --dry-run: the command parses, the config resolves, nothing trains;
- serve: the web page's server, on the port the README names (another one only where that port is taken here):
         started, asked for a page and a grid, stopped;
- ci:    the test command itself, which .ci/run runs verbatim.
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import time
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from support import ROOT, SHARED, TINY, free_port, legible_digits, make_mnist, subprocess_env, wait_job

INCEPTION = SHARED / "models" / "weights-inception-2015-12-05-6726825d.pth"
TINY_RUN = TINY[:-1] + ["train.max_steps=2"]       # the TINY model, 2 steps, auto precision left to the config


@dataclass
class Command:
    text: str                                  # exactly as in the README
    how: str                                   # run | parse | serve | ci | container
    append: list[str] = field(default_factory=list)
    expect: str = ""                           # a line the command's output (or the named file) must contain
    expect_in: str = ""                        # file (in the workspace) holding `expect`, instead of the output
    slurm: bool = False
    slow: bool = False                         # run in the slow tier (minutes of work behind one line)
    # (append, expect) instead, where ../shared's Inception weights are absent (a user's checkout, offline)
    without_inception: tuple[list[str], str] | None = None


INCEPTION_EVAL = ["--num-samples", "10", "--batch-size", "10"]   # Inception runs ~5 images/s on this CPU


EVAL = ["--num-samples", "50"]
SWEEP_RUN = [*TINY_RUN, "eval.num_samples=50"]   # the studies evaluate 2000 samples; the small test set has 128
# A search's trials: the TINY model (fixing the widths and batch it searches), one epoch each, evaluated once.
SEARCH_RUN = [*TINY, "train.epochs=1", "eval.num_samples=50"]
COMMANDS = [
    Command("python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && .venv/bin/python train_ddp.py",
            "run", TINY_RUN, "done: 2 steps"),
    Command("python3 -m venv .venv && .venv/bin/pip install -q -r requirements-dev.txt && .venv/bin/python -m "
            "pytest -q", "ci"),
    Command("accelerate launch train_ddp.py", "run", TINY_RUN, "done: 2 steps"),
    Command("accelerate launch train_ddp.py --config configs/mnist32.yaml train.epochs=2 optim.lr_g=1e-4", "run",
            TINY_RUN, "done: 2 steps"),
    Command("accelerate launch --num_processes 4 train_ddp.py train.mixed_precision=fp16", "parse", ["--dry-run"],
            "mixed_precision: fp16"),
    Command("torchrun --nproc_per_node 2 train_ddp.py --config configs/mnist32.yaml", "run", TINY_RUN,
            "2 process(es) on cpu"),
    Command("python train_ddp.py --config configs/mnist32.yaml --dry-run", "run", [], "name: mnist32"),
    Command("bash launch/torchrun.sh --config configs/mnist64.yaml train.mixed_precision=fp16", "parse",
            ["--dry-run"], "mixed_precision: fp16"),
    Command("accelerate launch --config_file launch/accelerate_multigpu_fp16.yaml --num_processes 8 train_ddp.py",
            "parse", ["--dry-run"], "name: mnist64"),
    Command("accelerate launch --config_file launch/accelerate_1gpu.yaml train_ddp.py", "parse", ["--dry-run"],
            "name: mnist64"),
    Command("NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 MASTER_PORT=29500 bash launch/torchrun.sh --config "
            "configs/mnist64.yaml", "run", TINY_RUN, "2 process(es) on cpu"),
    Command("accelerate launch --config_file launch/accelerate_multinode.yaml --num_machines 2 --machine_rank "
            "$NODE_RANK --num_processes 16 --main_process_ip $MASTER_ADDR --main_process_port $MASTER_PORT "
            "train_ddp.py", "parse", ["--dry-run"], "name: mnist64"),
    Command("sbatch slurm/train.sbatch --config configs/mnist64.yaml train.epochs=10", "run", TINY_RUN,
            "done: 2 steps", slurm=True),
    Command("sbatch --nodes=4 --gpus-per-node=8 slurm/train.sbatch train.mixed_precision=fp16", "parse",
            ["--dry-run"], "mixed_precision: fp16"),
    Command("sbatch --dependency=afterok:$JOB --export=ALL,TRAIN_JOB=$JOB slurm/eval.sbatch", "run",
            INCEPTION_EVAL, '"metric": "kid"', slurm=True,
            without_inception=(["--metrics", "clf_fid,coverage", *EVAL], '"metric": "clf_fid"')),
    Command("python -m dcgan.generate --checkpoint runs/000-mnist64 --num 64 --out grid.png", "run", [],
            "grid.png: a grid of 64 samples"),
    Command("python -m dcgan.generate --checkpoint runs/000-mnist64/generator.safetensors --num 16 --out-dir digits",
            "run", [], "digits: 16 PNGs"),
    Command("python -m dcgan.generate --checkpoint runs/000-mnist64 --num 16 --interpolate 24 --out walk.gif", "run",
            [], "walk.gif: a latent walk of 96 frames"),
    Command("python -m dcgan.generate --progress runs/000-mnist64 --out progress.gif", "run", [],
            "progress.gif: 1 frame(s), one per epoch of runs/000-mnist64"),
    Command("python train_ddp.py --config configs/mnist32_cond.yaml", "run", TINY_RUN, "done: 2 steps"),
    Command("python -m dcgan.generate --checkpoint runs/000-mnist32_cond --digit 7 --num 16 --out sevens.png", "run",
            [], "sevens.png: a grid of 16 samples"),
    Command("python -m dcgan.generate --checkpoint runs/000-mnist32_cond --num 20 --interpolate 24 --out walk.mp4",
            "run", [], "walk.mp4: a latent walk of 96 frames"),
    Command("python -m dcgan.serve --checkpoint runs/000-mnist32_cond", "serve", [], '"conditional":true'),
    Command("python -m dcgan.export --checkpoint runs/000-mnist32_cond", "run", [], "generator.onnx: ONNX opset 18"),
    Command("python -m dcgan.generate --checkpoint runs/000-mnist32_cond/generator.onnx --digit 7 --num 16 --out "
            "sevens.png", "run", [], "sevens.png: a grid of 16 samples"),
    Command("python -m dcgan.serve --checkpoint runs/000-mnist32_cond/generator.onnx", "serve", [],
            '"conditional":true'),
    Command("python -m evaluation.classifier --data-root data", "run", [], "; saved"),
    Command("python -m evaluation.fid --checkpoint runs/000-mnist64", "run", INCEPTION_EVAL,
            "unavailable: these weights give a NaN score", without_inception=(["--metrics", "clf_fid", *EVAL],
                                                                               "clf_fid")),
    Command("python -m evaluation.fid --checkpoint runs/000-mnist64 --metrics clf_fid,clf_isc,coverage "
            "--num-samples 10000", "run", EVAL, "classes_covered"),
    Command("python -m evaluation.fid --checkpoint runs/000-mnist64 --all --metrics clf_fid,coverage", "run", EVAL,
            "step,metric,value,samples", "runs/000-mnist64/eval_curve.csv"),
    Command("python -m evaluation.fid --checkpoint runs/000-mnist64/checkpoints/ckpt-00004000.pt --metrics fid,kid "
            "--inception-weights /path/weights-inception-2015-12-05-6726825d.pth --reference-floor --json fid.json",
            "run", ["--num-samples", "10", "--batch-size", "10"], '"metric": "floor_fid"', "fid.json"),
    Command("python -m evaluation.fid --checkpoint runs/000-mnist64/generator.safetensors --metrics "
            "clf_fid,coverage", "run", EVAL, "exported EMA G"),
    Command("python train_ddp.py train.mixed_precision=fp16 eval.every_epochs=1 eval.metrics=fid "
            "eval.best_metric=fid eval.num_samples=10000 eval.target=10 "
            "eval.inception_weights=/path/weights-inception-2015-12-05-6726825d.pth", "parse", ["--dry-run"],
            "target: 10"),
    Command("python -m experiments.run configs/experiments/baseline.yaml", "run", SWEEP_RUN,
            "report: runs/baseline/report.md"),
    Command("python -m experiments.run configs/experiments/hyperparameters.yaml --list", "run", [],
            "rmsprop_lr0.0005_batch_size128"),
    Command("python -m experiments.report runs/baseline", "run", [], "| mnist32-seed2 |", "runs/baseline/report.md"),
    Command("sbatch slurm/sweep.sbatch configs/experiments/precision.yaml", "run", SWEEP_RUN,
            "| mixed |", "runs/precision/report.md", slurm=True),
    Command("python -m experiments.search configs/search/mnist32.yaml", "run", [*SEARCH_RUN, "--trials", "2"],
            "2 trial(s) run here", slow=True),
    Command("python -m experiments.search configs/search/mnist32.yaml --report", "run", SEARCH_RUN,
            "# Search mnist32-search: 2 trials", "runs/mnist32-search/search.md", slow=True),
    Command("python train_ddp.py --config runs/mnist32-search/best.yaml", "run", TINY_RUN, "done: 2 steps",
            slow=True),
    Command("sbatch --array=0-7 slurm/search.sbatch configs/search/mnist32.yaml", "run",
            [*SEARCH_RUN, "--trials", "3"], "# Search mnist32-search: 3 trials", "runs/mnist32-search/search.md",
            slurm=True, slow=True),
    # "container": run as written (with the test machine's base image, network and pip settings added) by
    # tests/test_containers.py in the slow tier: building the images takes minutes and gigabytes
    Command("podman build -t dcgan-ddp .", "container"),
    Command("podman run --rm -v ./data:/app/data -v ./runs:/app/runs dcgan-ddp --config configs/mnist32.yaml",
            "container"),
    Command("podman build -f Containerfile.serve -t dcgan-serve .", "container"),
    Command("podman run --rm -p 7860:7860 -v ./pretrained/mnist32_cond:/model:ro dcgan-serve", "container"),
    Command("accelerate launch train_ddp.py train.resume=latest", "run", TINY[:-1] + ["train.max_steps=4"],
            "done: 4 steps"),
    Command("accelerate launch train_ddp.py train.resume=runs/003-mnist64/checkpoints/ckpt-00002000.pt", "run",
            TINY[:-1] + ["train.max_steps=4"], "resumed from runs/003-mnist64/checkpoints/ckpt-00002000.pt at step 2"),
]


def readme_commands() -> list[str]:
    """Every command line of the README's ```bash blocks: continuations joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(re.sub(r"\s+", " ", line))
    return commands


def test_every_readme_command_has_a_test_and_every_test_a_command():
    assert readme_commands() == [c.text for c in COMMANDS]


def test_ci_runs_the_readme_test_command_then_the_slow_tier():
    ci = [c.text for c in COMMANDS if c.how == "ci"]
    script = (ROOT / ".ci" / "run").read_text()
    assert len(ci) == 1 and ci[0] in script
    assert script.index(ci[0]) < script.index(".venv/bin/python -m pytest -q -m slow")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A copy of the repository as a user's checkout: data/ holds legible digits (6000 + 500), .venv is this
    test's environment, runs/ and the classifier cache start empty; torch-fidelity finds ../shared's Inception
    weights in its own place, where they exist."""
    ws = tmp_path_factory.mktemp("checkout")
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                             text=True).stdout.split()
    for name in tracked or [p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*") if p.is_file()]:
        if (ROOT / name).is_file() and not name.startswith(".venv"):
            (ws / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, ws / name)
    data = make_mnist(ws / "data", n_train=6000, n_test=500, digits=legible_digits)
    (ws / ".venv").symlink_to(Path(sys.prefix))
    env = subprocess_env()
    env.update(PYTHONPATH=str(ws), DCGAN_CACHE=str(ws / "cache"), PYTHON=sys.executable, TORCH_HOME=str(ws / "torch"),
               PATH=f"{Path(sys.executable).parent}:{env['PATH']}")
    if INCEPTION.is_file():
        (ws / "torch" / "hub" / "checkpoints").mkdir(parents=True)
        (ws / "torch" / "hub" / "checkpoints" / INCEPTION.name).symlink_to(INCEPTION)
    # The SLURM evaluation job comes before the README trains the classifier: a tiny one is in the cache already.
    from evaluation.classifier import save_classifier, train_classifier
    model, _ = train_classifier(data, epochs=1, batch_size=64, log=lambda *_: None)
    save_classifier(model, ws / "cache")
    return {"dir": ws, "env": env, "jobs": {}}


def shell(ws: dict, line: str, env: dict, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", line], cwd=ws["dir"], env=env, capture_output=True, text=True,
                          timeout=timeout)


def prepare(ws: dict, command: Command) -> None:
    """What a command's placeholders name: checkpoints under the README's file names, and the conditional run
    under the name it gets in a fresh checkout (here, runs/ holds earlier commands' runs)."""
    conditional = ws["dir"] / "runs" / "000-mnist32_cond"
    if "runs/000-mnist32_cond" in command.text and not conditional.exists():
        conditional.symlink_to(sorted((ws["dir"] / "runs").glob("*-mnist32_cond"))[-1].name)
    trained = ws["dir"] / "runs" / "000-mnist64" / "checkpoints"
    for name in ("runs/000-mnist64/checkpoints/ckpt-00004000.pt", "runs/003-mnist64/checkpoints/ckpt-00002000.pt"):
        if name in command.text and not (ws["dir"] / name).exists():
            (ws["dir"] / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(sorted(trained.glob("ckpt-*.pt"))[0], ws["dir"] / name)


def line_for(command: Command, ws: dict) -> str:
    """The README's line with the appended settings; the install steps of quickstart command 1 are checked
    without creating another environment (see test_quickstart_install_is_satisfied)."""
    text = command.text
    if text.startswith("python3 -m venv .venv && .venv/bin/pip install -r requirements.txt && "):
        text = text.split(" && ")[-1]
    text = text.replace("/path/weights-inception-2015-12-05-6726825d.pth", str(INCEPTION))
    return " ".join([text, *command.append])


@pytest.mark.parametrize("command", [pytest.param(c, marks=[pytest.mark.slow] if c.slow else [])
                                     for c in COMMANDS if c.how not in ("ci", "container")],
                         ids=lambda c: c.text[:70])
def test_readme_command(command: Command, workspace, request):
    if "--inception-weights" in command.text and not INCEPTION.is_file():
        pytest.skip("Inception weights (../shared/models) absent")
    env = dict(workspace["env"])
    if command.slurm:
        env.update(request.getfixturevalue("slurm_env"))
        env.update(PYTHONPATH=workspace["env"]["PYTHONPATH"], DCGAN_CACHE=workspace["env"]["DCGAN_CACHE"])
    if command.without_inception and not INCEPTION.is_file():
        append, expect = command.without_inception
        command = dataclasses.replace(command, append=append, expect=expect)
    prepare(workspace, command)
    line = line_for(command, workspace)
    if command.how == "parse":
        return parse_only(workspace, line, env, command)
    if command.how == "serve":
        return serve(workspace, line, env, command)
    if command.text.startswith("NNODES=2"):
        return two_nodes(workspace, line, env, command)
    if command.text.startswith("sbatch slurm/sweep.sbatch"):
        return slurm_sweep(workspace, line, env, command)
    if "slurm/search.sbatch" in command.text:
        return slurm_search(workspace, line, env, command)
    if command.text.startswith("sbatch") and command.how == "run":
        return slurm_job(workspace, line, env, command)
    result = shell(workspace, line, env)
    assert result.returncode == 0, f"{line}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    check_expectation(workspace, command, result)


def check_expectation(ws: dict, command: Command, result) -> None:
    where = (ws["dir"] / command.expect_in).read_text() if command.expect_in else result.stdout + result.stderr
    assert command.expect in where, f"{command.text}: '{command.expect}' not in\n{where[-3000:]}"


def parse_only(ws: dict, line: str, env: dict, command: Command) -> None:
    """A GPU-only form on this CPU machine: accelerate's parser takes the launcher's part (sbatch's options are
    SLURM's), and the trainer's part runs with --dry-run (torchrun.sh runs whole: one CPU process)."""
    words = shlex.split(line.replace("$NODE_RANK", "0").replace("$MASTER_ADDR", "127.0.0.1")
                        .replace("$MASTER_PORT", "29500"))
    script = next(i for i, w in enumerate(words) if w.endswith((".py", ".sh", ".sbatch")))
    if words[:2] == ["accelerate", "launch"]:
        from accelerate.commands.launch import launch_command_parser
        parsed = launch_command_parser().parse_args(words[2:])
        assert parsed.training_script == "train_ddp.py"
    if words[script].endswith((".py", ".sbatch")):
        line = shlex.join([sys.executable, "train_ddp.py", *words[script + 1:]])
    result = shell(ws, line, env)
    assert result.returncode == 0, f"{line}\n{result.stderr[-3000:]}"
    check_expectation(ws, command, result)
    assert "run dir" not in result.stdout + result.stderr      # parsed and resolved, never trained


def port_is_free(port: int) -> bool:
    import socket
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def serve(ws: dict, line: str, env: dict, command: Command) -> None:
    """The web page's server, started as written, asked for /info and a grid of 7s at the address the README's
    comment gives, stopped. Only where that port is taken on this machine does it get another (--port)."""
    import urllib.request
    readme_port = int(re.search(re.escape(command.text) + r"\s+# a web page: open http://127\.0\.0\.1:(\d+)",
                                (ROOT / "README.md").read_text()).group(1))
    port, info = (readme_port, "") if port_is_free(readme_port) else (free_port(), "")
    if port != readme_port:
        line = f"{line} --port {port}"
    server = subprocess.Popen(["bash", "-c", f"exec {line}"], cwd=ws["dir"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(300):
            try:
                info = urllib.request.urlopen(f"http://127.0.0.1:{port}/info", timeout=2).read().decode()
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()[-3000:]
                time.sleep(0.2)
        grid = urllib.request.urlopen(f"http://127.0.0.1:{port}/grid.png?digit=7&count=4", timeout=60).read()
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert command.expect in info.replace(" ", "") and grid.startswith(b"\x89PNG"), info


def two_nodes(ws: dict, line: str, env: dict, command: Command) -> None:
    """Both nodes of the README's two-node form on this machine: node0 is 127.0.0.1, a free port for 29500."""
    port = free_port()
    procs = []
    for rank in (0, 1):
        node_line = line.replace("NODE_RANK=0", f"NODE_RANK={rank}").replace("node0", "127.0.0.1")
        node_line = node_line.replace("MASTER_PORT=29500", f"MASTER_PORT={port}")
        procs.append(subprocess.Popen(["bash", "-c", node_line], cwd=ws["dir"], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    check_expectation(ws, command, subprocess.CompletedProcess(line, 0, outputs[0], ""))


def slurm_job(ws: dict, line: str, env: dict, command: Command) -> None:
    """Submitted as written (--parsable added to read the job id), waited for; $JOB is the training job's id."""
    line = line.replace("$JOB", ws["jobs"].get("train", "MISSING")).replace("sbatch ", "sbatch --parsable ", 1)
    submitted = shell(ws, line, env, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    state = wait_job(env, job)
    kind = "eval" if "eval.sbatch" in line else "train"
    output = "\n".join(p.read_text() for p in ws["dir"].glob(f"*-{job}.out"))
    assert state == "COMPLETED", output[-4000:]
    ws["jobs"][kind] = job
    run_dir = ws["dir"] / "runs" / f"slurm-{ws['jobs']['train']}"
    where = (run_dir / "train.log").read_text() if kind == "train" else (run_dir / "eval.json").read_text()
    assert command.expect in where, where[-3000:]


def slurm_sweep(ws: dict, line: str, env: dict, command: Command) -> None:
    """The sweep job submits the members' array and the report job after it: all three complete, every member
    finished in its own run dir, and the report lists them."""
    submitted = shell(ws, line.replace("sbatch ", "sbatch --parsable ", 1), env, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    job = submitted.stdout.strip().split(";")[0]
    state = wait_job(env, job)
    output = (ws["dir"] / f"sweep-{job}.out").read_text()
    assert state == "COMPLETED", output[-4000:]
    array, report = re.search(r"array job (\d+), report job (\d+)", output).groups()
    assert wait_job(env, report) == "COMPLETED", "\n".join(p.read_text() for p in ws["dir"].glob("sweep*.out"))
    logs = "\n".join(p.read_text()[-2000:] for p in ws["dir"].glob(f"sweep-{array}_*.out"))
    for member in ("fp32", "mixed"):
        assert (ws["dir"] / "runs" / "precision" / member / "generator.pt").is_file(), logs
    check_expectation(ws, command, submitted)


def slurm_search(ws: dict, line: str, env: dict, command: Command) -> None:
    """The array of search workers: every task completes, the first submits the report job, which completes
    after the array and writes the report the row names."""
    submitted = shell(ws, line.replace("sbatch ", "sbatch --parsable ", 1), env, timeout=60)
    assert submitted.returncode == 0, submitted.stderr
    array = submitted.stdout.strip().split(";")[0]
    tasks = int(re.search(r"--array=0-(\d+)", line).group(1)) + 1
    logs = lambda: "\n".join(p.read_text()[-1500:] for p in ws["dir"].glob(f"search-{array}_*.out"))  # noqa: E731
    for task in range(tasks):
        assert wait_job(env, f"{array}_{task}", timeout=600) == "COMPLETED", logs()
    report = re.search(r"report job (\d+) runs after array", logs()).group(1)
    assert wait_job(env, report) == "COMPLETED", logs()
    check_expectation(ws, command, submitted)


def test_quickstart_install_is_satisfied():
    """Quickstart command 1 installs requirements.txt: everything it asks for is what the test environment has
    (CI installs requirements-dev.txt, which includes it), so no requirement is missing from the file."""
    result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "-r",
                             str(ROOT / "requirements.txt")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Would install" not in result.stdout, result.stdout[-2000:]


def test_quickstart_without_mnist_ends_in_one_line(tmp_path):
    """The newcomer's most likely first failure: command 1's training part, offline, in a checkout without MNIST
    (data/ empty, so it tries to download): one line on stderr, naming what to do, and nothing else."""
    train = next(c.text for c in COMMANDS if c.text.startswith("python3 -m venv")).split(" && ")[-1]
    assert train == ".venv/bin/python train_ddp.py"
    env = dict(subprocess_env(), https_proxy="http://127.0.0.1:9", http_proxy="http://127.0.0.1:9")  # offline
    result = subprocess.run([sys.executable, str(ROOT / "train_ddp.py"), f"data.root={tmp_path / 'data'}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stdout == "", result.stdout[-2000:]
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: could not download MNIST into "), \
        result.stderr[-3000:]


def test_readme_python_snippet_loads_an_exported_generator(workspace):
    """The README's Python block, as written, in a checkout whose runs/000-mnist64 is a trained mnist64 run."""
    run = workspace["dir"] / "runs" / "000-mnist64"
    if not (run / "generator.safetensors").is_file():
        pytest.skip("runs/000-mnist64 is made by the README's first training command (run this module whole)")
    config = yaml.safe_load((run / "config.yaml").read_text())
    snippet = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)[0]
    sizes = f"image_size={config['data']['image_size']}, nz={config['model']['nz']}, ngf={config['model']['ngf']}"
    snippet = snippet.replace("image_size=64, nz=100, ngf=64", sizes).replace("torch.randn(16, 100)",
                                                                             f"torch.randn(16, {config['model']['nz']})")
    result = subprocess.run([sys.executable, "-c", snippet + "\nprint(tuple(images.shape))"], cwd=workspace["dir"],
                            env=workspace["env"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == f"(16, 1, {config['data']['image_size']}, {config['data']['image_size']})"


# ---- commands quoted in the prose (after the shell blocks: they use the runs those made) ----

@dataclass
class Inline:
    """A command quoted in the README's prose (`...`), and how it is checked: `run` runs it in the workspace with
    `append` (expecting `expect` in its output); `block` is the start of a shell-block command, run there; `install`
    names a requirements file whose packages the test environment has; `marker` is a pytest tier (the suite cannot
    run itself: its marker must exist in pytest.ini and mark some test)."""
    text: str
    how: str
    append: list[str] = field(default_factory=list)
    expect: str = ""
    needs: str = "runs/000-mnist64"            # what the shell blocks' commands made that it runs on
    slow: bool = False                         # in the slow tier, with the block commands that make `needs`


INLINE = [
    Inline(".venv/bin/python train_ddp.py data.root=/path/to/data", "run", TINY_RUN, "done: 2 steps"),
    Inline("accelerate launch train_ddp.py", "block"),
    Inline("accelerate launch", "block"),
    Inline(".venv/bin/python train_ddp.py --config configs/mnist32.yaml", "run", TINY_RUN, "done: 2 steps"),
    Inline(".venv/bin/python -m dcgan.generate --checkpoint pretrained/mnist32_cond --digit 7 --num 16 --out sevens.png",
           "run", [], "sevens.png: a grid of 16 samples"),
    Inline("torchrun --nproc_per_node 2", "block"),
    # the README's warning: on CPUs, accelerate's --num_processes starts one process
    Inline("accelerate launch --cpu --num_processes 2", "run", ["train_ddp.py", *TINY_RUN], "1 process(es) on cpu"),
    Inline("python -m bench.speed", "run", ["--batch-size", "32", "--steps", "2", "--rounds", "1", "--warmup", "1",
                                           "data.image_size=28", "model.nz=16", "model.ngf=8", "model.ndf=8"],
           "ratio ours/reference:"),
    Inline("pytest -m slurm", "marker"),
    # `auto` takes the launcher's choice: bf16 here (fp16 needs a GPU)
    Inline("accelerate launch --mixed_precision fp16\\|bf16", "run", ["train_ddp.py", *TINY_RUN], "precision bf16,"),
    Inline("pip install -r requirements-wandb.txt", "install"),
    Inline("tensorboard --logdir runs", "run", ["--inspect"], "Processing event files"),
    Inline("python -m evaluation.grey_probe", "run", ["--checkpoint", "runs/000-mnist64"], "real digits:"),
    Inline("pip install -r requirements-serve.txt", "install"),
    Inline("pip install -r requirements-onnx.txt", "install"),
    Inline("python -m evaluation.grey_probe", "run", ["--checkpoint", "runs/000-mnist64"], "real digits:"),
    Inline("python -m evaluation.classifier", "block"),
    Inline("pip install -r requirements-search.txt", "install"),
    Inline("python -m experiments.report runs/mnist32-search", "run", [], "runs/mnist32-search/report.md",
           needs="runs/mnist32-search", slow=True),
    Inline("python -m pytest -q", "marker"),
    Inline("python -m pytest -m slow", "marker"),
    Inline('python -m pytest -m "slow or not slow"', "marker"),
    Inline("python -m pytest -m gpu", "marker"),
]


def readme_inline_commands() -> list[str]:
    """Every `...` span of the README's prose that starts with a command (a program and an argument)."""
    prose = re.sub(r"```.*?```", "", (ROOT / "README.md").read_text(), flags=re.S)
    spans = re.findall(r"`([^`\n]+)`", prose)
    return [s for s in spans if re.match(r"(python3?|pip|sbatch|accelerate|torchrun|bash|srun|tensorboard|\.venv/bin/"
                                         r"|pytest|podman|docker)\S* \S", s)]


def test_every_inline_command_has_a_check_and_every_check_a_command():
    assert readme_inline_commands() == [c.text for c in INLINE]


def test_inline_block_and_marker_commands_are_what_they_claim():
    for inline in INLINE:
        if inline.how == "block":
            assert any(c.text == inline.text or c.text.startswith(inline.text + " ") for c in COMMANDS), inline.text
        if inline.how == "marker":
            marker = re.search(r"-m \"?([\w ]+?)\"?$", inline.text)
            names = marker.group(1).replace(" or ", " ").replace("not ", "").split() if marker else []
            declared = (ROOT / "pytest.ini").read_text()
            for name in names:
                assert re.search(rf"^\s+{name}:", declared, re.M), f"{inline.text}: no marker {name} in pytest.ini"
                assert any(f"pytest.mark.{name}" in p.read_text() for p in (ROOT / "tests").glob("test_*.py")), name


def test_inline_installs_are_satisfied():
    """The optional requirements files the prose names: all they ask for is what the test environment has."""
    for inline in INLINE:
        if inline.how == "install":
            requirements = ROOT / inline.text.split()[-1]
            result = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "-r",
                                     str(requirements)], capture_output=True, text=True, timeout=300)
            assert result.returncode == 0 and "Would install" not in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("inline", [pytest.param(c, marks=[pytest.mark.slow] if c.slow else []) for c in
                                    {c.text: c for c in INLINE if c.how == "run"}.values()],  # each once
                         ids=lambda c: c.text[:70])
def test_readme_inline_command(inline: Inline, workspace):
    """Run in the workspace after the shell blocks' commands (runs/000-mnist64 exists then), as written but for
    the one-of spelling `a\\|b` (the last choice runs), /path/to/data (the workspace's data) and `append`."""
    if not (workspace["dir"] / inline.needs).is_dir():
        pytest.skip(f"{inline.needs} is made by the README's block commands (run this module whole, in its tier)")
    text = re.sub(r"\S+\\\|(\S+)", r"\1", inline.text).replace("/path/to/data", "data")
    result = shell(workspace, " ".join([text, *inline.append]), workspace["env"])
    assert result.returncode == 0, f"{text}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    assert inline.expect in result.stdout + result.stderr, (result.stdout + result.stderr)[-3000:]
