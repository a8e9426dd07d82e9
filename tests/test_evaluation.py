"""Evaluation: torch-fidelity metrics, the MNIST classifier's metrics, the CLI, and evaluation during training."""
import json
import math
import re
from dataclasses import asdict
import subprocess
import sys

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from support import ROOT, SHARED, TINY, RunsCode, one_line_error, only_run_dir, run_train, subprocess_env
from dcgan.config import EvalConfig
from evaluation.classifier import accuracy, load_classifier
from evaluation.common import EvaluationError
from evaluation.during_training import PeriodicEvaluator
from evaluation.metrics import classifier_metrics, coverage, inception_metrics, inception_weights_problem, real_images
from evaluation.registry import Measurement, measure

SHARED_DATA = SHARED / "data"
INCEPTION = SHARED / "models" / "weights-inception-2015-12-05-6726825d.pth"
CPU = torch.device("cpu")
needs_mnist = pytest.mark.skipif(not (SHARED_DATA / "MNIST" / "raw").is_dir(), reason="real MNIST (../shared) absent")
needs_inception = pytest.mark.skipif(not INCEPTION.is_file(), reason="Inception weights (../shared/models) absent")


@pytest.fixture(scope="module")
def short_run(mnist_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_runs")
    run_train(TINY + [f"data.root={mnist_root}", f"train.out_dir={out}", "train.epochs=2", "train.checkpoint_every=8",
                      "train.keep_last=10"])
    return only_run_dir(out)


def cli(*args, cache=None):
    env = subprocess_env()
    if cache:
        env["DCGAN_CACHE"] = str(cache)
    return subprocess.run([sys.executable, "-m", "evaluation.fid", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


# ---- the classifier and its metrics ---------------------------------------------------------------------

def test_coverage_statistics_on_known_logits():
    uniform = torch.eye(10).repeat(50, 1) * 20       # confident, every class equally often
    stats = coverage(uniform)
    assert stats["classes_covered"] == 10 and stats["kl_to_uniform"] < 1e-6 and stats["confident_share"] == 1
    collapsed = torch.zeros(500, 10)
    collapsed[:, 3] = 20
    stats = coverage(collapsed)
    assert stats["classes_covered"] == 1 and abs(stats["kl_to_uniform"] - math.log(10)) < 1e-5


def test_classifier_weights_are_hash_checked(tiny_classifier, tmp_path):
    saved = torch.load(tiny_classifier, weights_only=True)
    loaded = load_classifier(tiny_classifier).state_dict()
    assert list(loaded) == list(saved) and all(torch.equal(loaded[k], saved[k]) for k in saved)
    corrupt = tmp_path / tiny_classifier.name
    corrupt.write_bytes(tiny_classifier.read_bytes()[:-10] + b"0123456789")
    with pytest.raises(Exception, match="corrupt"):
        load_classifier(corrupt)


@pytest.mark.slow
@needs_mnist
def test_real_classifier_quality(real_classifier):
    from torchvision.datasets import MNIST
    test = MNIST(str(SHARED_DATA), train=False)
    assert accuracy(load_classifier(real_classifier), test.data, test.targets) >= 0.99
    reference = real_images(SHARED_DATA, "test", 28, 10000)
    rows = {r.metric: r.value for r in classifier_metrics(reference, reference, "t", ["clf_isc", "coverage"],
                                                           str(real_classifier), CPU, 500, 0, real_classifier.parent)}
    assert rows["clf_isc"] >= 9.5 and rows["classes_covered"] == 10 and rows["confident_share"] > 0.95


def test_cached_reference_statistics_belong_to_the_reference_images(tiny_classifier, tmp_path):
    """Two references under one name (e.g. mnist-test-28px-32 from two data roots) must not share cached
    statistics: the second FID has to equal one computed without a cache."""
    torch.manual_seed(0)
    fake = torch.randint(0, 256, (64, 1, 32, 32), dtype=torch.uint8).repeat(1, 3, 1, 1)
    dark, noise = fake // 8, torch.randint(0, 256, fake.shape, dtype=torch.uint8)

    def clf_fid(reference, cache):
        return classifier_metrics(fake, reference, "same-name", ["clf_fid"], str(tiny_classifier), CPU, 32, 0,
                                  cache)[0].value

    first, second = clf_fid(dark, tmp_path / "shared"), clf_fid(noise, tmp_path / "shared")
    assert second == pytest.approx(clf_fid(noise, tmp_path / "fresh"), rel=1e-6) and second != first


@pytest.mark.slow
@needs_mnist
def test_real_vs_real_small_and_noise_large(real_classifier, tmp_path):
    # The whole test set vs 10k training digits (FID's small-sample bias is large; the halves of the test set
    # also differ: its first 5000 digits come from other writers than its last 5000).
    reference = real_images(SHARED_DATA, "test", 32, 10000)
    held_out = real_images(SHARED_DATA, "train", 32, 10000)
    noise = torch.randint(0, 256, (10000, 1, 32, 32), dtype=torch.uint8).repeat(1, 3, 1, 1)
    fid = {}
    for name, images in (("real", held_out), ("noise", noise)):
        rows = classifier_metrics(images, reference, "mnist-test-32px-10000", ["clf_fid"], str(real_classifier),
                                  CPU, 500, 0, tmp_path)
        fid[name] = rows[0].value
    assert fid["real"] < 5 and fid["noise"] > 100 * fid["real"], fid


@pytest.mark.slow
@needs_mnist
def test_coverage_detects_a_collapsed_generator(real_classifier, tmp_path):
    from torchvision.datasets import MNIST
    test = MNIST(str(SHARED_DATA), train=False)
    ones = real_images(SHARED_DATA, "test", 28, 10000)[test.targets == 1][:500]   # "a G that only draws 1s"
    rows = {r.metric: r.value for r in classifier_metrics(ones, ones, "ones", ["coverage"], str(real_classifier),
                                                           CPU, 500, 0, tmp_path)}
    assert rows["classes_covered"] == 1 and rows["kl_to_uniform"] > 2


@pytest.mark.slow
@needs_mnist
def test_a_grey_background_alone_makes_the_classifier_read_one_class(short_run, real_classifier):
    """Why few classes covered is not proof of a collapse (dcgan/machinery/health.py): `python -m evaluation.grey_probe` shows
    real test digits, every class present, read as one class once their black is lifted to grey; setting the
    pixels below that grey back to black brings their classes back."""
    result = subprocess.run([sys.executable, "-m", "evaluation.grey_probe", "--checkpoint", str(short_run),
                             "--data-root", str(SHARED_DATA), "--levels", "64", "--classifier-weights",
                             str(real_classifier)], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    read = {int(level): (int(classes), float(share)) for level, classes, share in
            re.findall(r"L= *(\d+) real digits: (\d+) class(?:es)?, top \d at ([\d.]+)", result.stdout)}
    assert read[0][0] == 10 and read[0][1] < 0.2, result.stdout
    assert read[64][0] <= 2 and read[64][1] >= 0.9, result.stdout
    from evaluation.grey_probe import blacken, lift_black
    from evaluation.metrics import classify, to_uint8_rgb
    grey = to_uint8_rgb(lift_black(real_images(SHARED_DATA, "test", 28, 1000)[:, :1].float() / 127.5 - 1, 64))
    restored = coverage(classify(blacken(grey, 65), real_classifier, CPU))
    assert restored["classes_covered"] == 10 and restored["kl_to_uniform"] < 0.2, restored


def test_reference_statistics_are_cached(tiny_classifier, mnist_root, tmp_path):
    reference = real_images(mnist_root, "test", 28, 100)
    fake = real_images(mnist_root, "train", 28, 100)
    first = classifier_metrics(fake, reference, "ref-100", ["clf_fid"], str(tiny_classifier), CPU, 50, 0, tmp_path)
    assert list(tmp_path.glob("ref-100-clf*.pt"))                  # statistics written to the cache

    class Untouchable(torch.utils.data.Dataset):                   # a cache hit never reads the reference
        def __len__(self):
            return 100

        def __getitem__(self, index):
            raise AssertionError("reference recomputed despite the cache")

    import evaluation.metrics as metrics
    original = metrics.ImageTensors
    metrics.ImageTensors = lambda images: Untouchable() if images is reference else original(images)
    try:
        second = classifier_metrics(fake, reference, "ref-100", ["clf_fid"], str(tiny_classifier), CPU, 50, 0, tmp_path)
    finally:
        metrics.ImageTensors = original
    assert second[0].value == pytest.approx(first[0].value)


def test_weights_files_that_would_run_code_are_refused(tiny_classifier, short_run, tmp_path):
    """The classifier and Inception weights are read as data too: a pickled payload is one line, and never runs."""
    marker = tmp_path / "code-ran"
    classifier = tmp_path / "evil-classifier.pt"
    torch.save({"body.0.weight": RunsCode(marker)}, classifier)
    with pytest.raises(EvaluationError, match="refused, since loading it could run code"):
        load_classifier(classifier)
    inception = tmp_path / "evil-inception.pth"
    torch.save({"fc.weight": RunsCode(marker)}, inception)
    result = cli("--checkpoint", short_run, "--metrics", "fid", "--num-samples", 4, "--inception-weights", inception)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr[-2000:]
    assert "--inception-weights:" in result.stderr and "refused, since loading it could run code" in result.stderr
    assert not marker.exists()


def test_inception_score_unavailable_with_nan_classifier(tmp_path):
    weights = tmp_path / "nan-fc.pth"
    torch.save({"fc.weight": torch.full((1008, 2048), float("nan")), "fc.bias": torch.zeros(1008)}, weights)
    assert "NaN classifier layer" in inception_weights_problem(str(weights))
    rows = inception_metrics(torch.zeros(4, 3, 28, 28, dtype=torch.uint8), torch.zeros(4, 3, 28, 28, dtype=torch.uint8),
                             "x", ["isc"], 4, str(weights), CPU, 2, 0, tmp_path)
    assert rows[0].value is None and rows[0].note.startswith("unavailable")
    torch.save({"conv.weight": torch.zeros(1)}, weights)
    assert "no classifier layer" in inception_weights_problem(str(weights))


# ---- the command line -------------------------------------------------------------------------------------

def test_background_gap_sees_a_grey_drift(short_run, mnist_root, tmp_path):
    """Real images against themselves: gap 0; the same with black raised to 32/255 (a grey background): +0.25."""
    real = real_images(mnist_root, "test", 28, 100)
    greyed = real.clamp(min=32)
    (same,) = measure(Measurement(real, 16, real, "t", 100, CPU, 50, 0, tmp_path), ["background"])
    (grey,) = measure(Measurement(greyed, 16, real, "t", 100, CPU, 50, 0, tmp_path), ["background"])
    assert same.metric == "background_gap" and same.value == 0
    assert grey.value == pytest.approx(32 / 127.5, abs=1e-6) and "real -1.0000" in grey.note
    result = cli("--checkpoint", short_run, "--metrics", "background", "--num-samples", 50, "--data-root", mnist_root,
                 "--cache-dir", tmp_path / "cache")                       # no classifier, no Inception needed
    assert result.returncode == 0 and "background_gap" in result.stdout, result.stderr[-2000:]


def test_cli_bad_input_is_one_line(short_run, tmp_path, capsys):
    """The first as typed, in its own process; the rest through the same main() in this one."""
    assert "does not exist" in one_line_error(cli("--checkpoint", tmp_path / "nope"))
    from evaluation.measure import main
    for args, expected in (((["--checkpoint", short_run, "--num-samples", "1"]), "at least 2 samples"),
                           ((["--checkpoint", short_run, "--metrics", "fid,fud"]), "unknown metric 'fud'"),
                           ((["--checkpoint", tmp_path]), "has no checkpoints")):
        status = main([str(a) for a in args])
        err = capsys.readouterr().err
        assert expected in one_line_error(subprocess.CompletedProcess(args, status, "", err))


def test_cli_all_checkpoints_writes_curve_json_and_tensorboard(short_run, tiny_classifier, mnist_root, tmp_path):
    result = cli("--checkpoint", short_run, "--all", "--metrics", "clf_fid,clf_kid,coverage", "--num-samples", 60,
                 "--classifier-weights", tiny_classifier, "--data-root", mnist_root, "--json", tmp_path / "e.json",
                 "--logdir", tmp_path / "tb", "--cache-dir", tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "e.json").read_text())
    assert [entry["step"] for entry in report] == [8, 16, 24, 32]
    curve = (short_run / "eval_curve.csv").read_text().splitlines()
    assert curve[0] == "step,metric,value,samples" and len(curve) == 1 + 4 * 5
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert [e.step for e in events.Scalars("eval/clf_fid")] == [8, 16, 24, 32]
    # the three outputs hold the same values, step by step
    for entry in report:
        values = {r["metric"]: r["value"] for r in entry["results"]}
        in_csv = {m: float(v) for s, m, v, n in (row.split(",") for row in curve[1:]) if int(s) == entry["step"]}
        assert in_csv == pytest.approx(values, rel=1e-6)
        tb = {m: next(e.value for e in events.Scalars(f"eval/{m}") if e.step == entry["step"]) for m in values}
        assert tb == pytest.approx(values, rel=1e-6)
    assert "clf_fid" in result.stdout and "mnist-test-28px-60" in result.stdout


def test_cli_evaluates_the_exported_generator_like_the_final_checkpoint(short_run, tiny_classifier, mnist_root,
                                                                          tmp_path):
    """generator.pt and generator.safetensors are the final checkpoint's (calibrated) EMA: the same metrics, to the
    digit. Without the run's config.yaml beside them: one line saying what is missing."""
    common = ["--metrics", "clf_fid,coverage", "--num-samples", 40, "--classifier-weights", tiny_classifier,
              "--data-root", mnist_root, "--cache-dir", tmp_path / "cache"]
    values = {}
    for name in ("checkpoints/ckpt-00000032.pt", "generator.pt", "generator.safetensors"):
        result = cli("--checkpoint", short_run / name, *common, "--json", tmp_path / "e.json")
        assert result.returncode == 0, result.stderr[-3000:]
        report = json.loads((tmp_path / "e.json").read_text())
        values[name] = {r["metric"]: r["value"] for r in report["results"]}
        assert report["step"] == (32 if name.startswith("checkpoints") else None)
    assert values["generator.pt"] == values["generator.safetensors"] == values["checkpoints/ckpt-00000032.pt"]
    assert "exported EMA G" in result.stdout
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "generator.safetensors").write_bytes((short_run / "generator.safetensors").read_bytes())
    result = cli("--checkpoint", loose / "generator.safetensors", *common)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: {loose}/generator.safetensors is an exported model without its run's config.yaml beside it (which "
        f"gives its architecture): copy the run's config.yaml next to it"]
    assert "--no-ema" in cli("--checkpoint", short_run / "generator.pt", "--no-ema", *common).stderr


@pytest.mark.slow
@needs_inception
def test_cli_inception_metrics_offline(short_run, mnist_root, tmp_path):
    result = cli("--checkpoint", short_run, "--metrics", "fid,kid,isc", "--num-samples", 24, "--batch-size", 12,
                 "--inception-weights", INCEPTION, "--data-root", mnist_root, "--json", tmp_path / "e.json",
                 "--cache-dir", tmp_path / "cache")
    assert result.returncode == 0, result.stderr[-3000:]
    values = {r["metric"]: r for r in json.loads((tmp_path / "e.json").read_text())["results"]}
    assert values["fid"]["value"] > 0 and math.isfinite(values["kid"]["value"])  # KID subset clamped to 24
    assert values["isc"]["value"] is None and "NaN classifier layer" in values["isc"]["note"]
    assert values["fid"]["weights"] == INCEPTION.name
    assert "unavailable" in result.stdout


# ---- during training ----------------------------------------------------------------------------------------

def evaluator(classifier, mnist_root, **settings) -> PeriodicEvaluator:
    """The evaluator train_ddp.py builds from the config's eval section, on the small IDX set."""
    values = {**asdict(EvalConfig()), "every_epochs": 1, "metrics": "clf_fid,coverage", "num_samples": 10,
              "classifier_weights": str(classifier), **settings}
    return PeriodicEvaluator(values, str(mnist_root), 28, 16)


def test_best_metric_and_patience_logic(tiny_classifier, mnist_root):
    patient = evaluator(tiny_classifier, mnist_root, best_metric="clf_fid", patience=2)
    assert patient.record({"clf_fid": 10.0}) and patient.record({"clf_fid": 8.0})
    assert not patient.record({"clf_fid": 9.0}) and not patient.should_stop()
    assert not patient.record({"clf_fid": 8.5}) and patient.should_stop()
    assert "has not improved in 2 evaluations" in patient.stop_reason({"clf_fid": 8.5}, 1.0)
    larger_is_better = evaluator(tiny_classifier, mnist_root, best_metric="confident_share")
    assert larger_is_better.record({"confident_share": 0.5}) and not larger_is_better.record({"confident_share": 0.4})


def test_target_direction_follows_the_metric(tiny_classifier, mnist_root):
    fid = evaluator(tiny_classifier, mnist_root, best_metric="clf_fid", target=10.0)
    assert fid.reached_target({"clf_fid": 9.5}) and not fid.reached_target({"clf_fid": 10.5})
    assert fid.stop_reason({"clf_fid": 9.5}, 12.34) == "clf_fid 9.5 reached eval.target=10 after 12.3 s of training"
    share = evaluator(tiny_classifier, mnist_root, best_metric="confident_share", target=0.8)   # larger is better
    assert share.reached_target({"confident_share": 0.9}) and not share.reached_target({"confident_share": 0.7})
    off = evaluator(tiny_classifier, mnist_root, best_metric="confident_share", target=0.0)
    assert not off.reached_target({"confident_share": 1.0}) and off.stop_reason({"confident_share": 1.0}, 1.0) == ""


def test_evaluator_settings_that_cannot_work_raise_its_own_error(tiny_classifier, mnist_root):
    for settings, says in ((dict(metrics="clf_fid,fud"), "unknown metric 'fud'"),
                           (dict(best_metric="fid"), "eval.best_metric='fid' is not computed"),
                           (dict(classifier_weights="/nowhere.pt"), "needs the MNIST classifier")):
        with pytest.raises(EvaluationError, match=says):
            evaluator(tiny_classifier, mnist_root, **settings)


def train_evaluating_every_epoch(mnist_root, tmp_path, classifier, *overrides):
    """Up to 40 epochs of 16 steps, judged by classes_covered after each; returns the run dir and its train.log."""
    run_train(TINY + [f"data.root={mnist_root}", f"train.out_dir={tmp_path}", "train.epochs=40",
                      "eval.every_epochs=1", "eval.num_samples=50", f"eval.classifier_weights={classifier}",
                      "eval.best_metric=classes_covered", *overrides])
    run_dir = only_run_dir(tmp_path)
    return run_dir, (run_dir / "train.log").read_text()


def test_training_stops_at_target_and_reports_time_to_quality(tiny_classifier, mnist_root, tmp_path):
    # No generator covers 11 classes: with that target, both evaluations of a 2-epoch run go by without a stop.
    _, log = train_evaluating_every_epoch(mnist_root, tmp_path / "unreachable", tiny_classifier,
                                          "eval.metrics=coverage", "eval.target=11", "train.epochs=2")
    assert log.count("eval step ") == 2 and "early stopping" not in log and "reached eval.target" not in log
    # Any generator covers at least one class: the first evaluation (step 16) meets classes_covered >= 1.
    run_dir, log = train_evaluating_every_epoch(mnist_root, tmp_path / "reached", tiny_classifier,
                                                "eval.metrics=coverage", "eval.target=1")
    assert "early stopping at step 16: classes_covered" in log and "reached eval.target=1 after" in log
    seconds = float(log.split("reached eval.target=1 after ")[1].split(" s of training")[0])
    final = torch.load(run_dir / "checkpoints" / "ckpt-00000016.pt", weights_only=True)
    assert 0 < seconds <= final["train_seconds"] + 0.05 and (run_dir / "generator.pt").is_file()  # log: 0.1 s
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    # logged at every log interval, and at the evaluation's step with the seconds the log reports
    logged = {e.step: e.value for e in events.Scalars("time/train_seconds")}
    assert sorted(logged) == [4, 8, 12, 16] and logged[16] == pytest.approx(seconds, abs=0.05)


def test_training_evaluates_keeps_best_and_stops_early(tiny_classifier, mnist_root, tmp_path):
    run_dir, log = train_evaluating_every_epoch(mnist_root, tmp_path, tiny_classifier,
                                                "eval.metrics=clf_fid,coverage", "eval.patience=2")
    assert "eval step 16 after" in log and (run_dir / "best.pt").is_file()
    # classes_covered tops out at 10 (or stalls below it): patience 2 ends the run two evaluations after its best
    assert "early stopping at step" in log and (run_dir / "generator.pt").is_file()
    stopped = int(log.split("early stopping at step ")[1].split(":")[0])
    covered = {int(step): int(value) for step, value in
               re.findall(r"eval step (\d+) after .*?classes_covered (\d+)", log)}
    best_step = min(step for step, value in covered.items() if value == max(covered.values()))
    assert max(covered) == stopped == best_step + 2 * 16
    best = torch.load(run_dir / "best.pt", weights_only=True)
    assert (best["step"], best["eval"]["best"]) == (best_step, max(covered.values()))
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    assert "eval/clf_fid" in events.Tags()["scalars"]


@pytest.mark.slow
@needs_inception
def test_time_to_quality_stage_of_the_gpu_suite_runs_small_on_the_cpu(mnist_root, tmp_path):
    """bench/gpu_suite.sh's quality stage itself, in small: Inception FID every QUALITY_EVERY epochs from a float16
    copy of the weights (the copy a device machine gets), the stop at eval.target, the last sample grids in $OUT.
    QUALITY_ARGS turn the GPU run into a tiny CPU one (later overrides win)."""
    weights = tmp_path / "inception-fp16.pth"
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in torch.load(INCEPTION, weights_only=True).items()},
               weights)
    out = tmp_path / "out"
    env = {**subprocess_env(), "PYTHON": sys.executable, "DATA": str(mnist_root), "INCEPTION": str(weights),
           "OUT": str(out), "RUNS": str(tmp_path / "runs"), "DCGAN_CACHE": str(tmp_path / "cache"),
           "QUALITY_EPOCHS": "4", "QUALITY_EVERY": "2", "QUALITY_SAMPLES": "32",
           "QUALITY_ARGS": " ".join(TINY + ["train.mixed_precision=no", "eval.target=1000"])}
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_suite.sh"), "quality"], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    log = (only_run_dir(tmp_path / "runs") / "train.log").read_text()
    assert "eval step 32 after" in log and "eval step 16 after" not in log  # every 2 epochs of 16 steps
    fid = float(log.split("early stopping at step 32: fid ")[1].split()[0])
    assert "reached eval.target=1000 after" in log
    events = EventAccumulator(str(only_run_dir(tmp_path / "runs") / "tensorboard")).Reload()
    assert events.Scalars("eval/fid")[-1].value == pytest.approx(fid, rel=5.01e-4)  # the log's 4 digits
    gap = float(re.search(r"eval step 32 after .*background_gap ([-\d.]+)", log).group(1))
    assert 0 < gap <= 2  # the stage measures the background too: an untrained G's is greyer than real black
    assert sorted(p.name.split("-")[0] for p in out.glob("*.png")) == [
        "samples_ema", "samples_generator", "samples_real_vs_fake"]


def test_eval_config_errors(tiny_classifier, mnist_root, tmp_path):
    result = run_train(TINY + [f"data.root={mnist_root}", f"train.out_dir={tmp_path}", "eval.every_epochs=1",
                               "eval.metrics=clf_fid", "eval.best_metric=fid",
                               f"eval.classifier_weights={tiny_classifier}"], check=False)
    assert result.returncode == 2 and "eval.best_metric='fid' is not computed" in result.stderr
    result = run_train(TINY + [f"data.root={mnist_root}", f"train.out_dir={tmp_path}", "eval.target=10"], check=False)
    assert result.returncode == 2 and "eval.target=10 needs evaluations: set eval.every_epochs" in result.stderr
    assert not any(tmp_path.iterdir())  # rejected before a run dir was created
