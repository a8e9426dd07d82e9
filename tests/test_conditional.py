"""The conditional DCGAN (model.conditional=true): G draws the digit it is given, D judges image and digit; it
trains like the unconditional one (2 processes with synced BatchNorm equal 1, exact resume), its sample grid has
one row per digit, `dcgan.generate --digit` draws one digit, and `class` measures it."""
import pytest
import torch
from PIL import Image

from support import TINY, DigitLookup, assert_same_state, load_ckpt, one_line_error, only_run_dir, run_train
from dcgan.config import ConfigError, load_config
from dcgan.models import NUM_CLASSES, Discriminator, Generator, balanced_labels

COND = TINY + ["model.conditional=true"]


@pytest.mark.parametrize("size", [28, 32, 64])
def test_conditional_models_use_the_labels(size):
    torch.manual_seed(0)
    G, D = Generator(size, nz=16, ngf=8, conditional=True).eval(), Discriminator(size, ndf=8, conditional=True).eval()
    z = torch.randn(20, 16)
    sevens, threes = torch.full((20,), 7), torch.full((20,), 3)
    with torch.no_grad():
        images = G(z, sevens)
        assert images.shape == (20, 1, size, size)
        assert not torch.allclose(images, G(z, threes))                  # the digit asked for changes the image
        assert torch.equal(G(z), G(z, balanced_labels(20)))              # unasked: 0-9 in turn
        logits = D(images, sevens)
        assert logits.shape == (20,) and not torch.allclose(logits, D(images, threes))
        plain = Discriminator(size, ndf=8).eval()
        assert torch.equal(plain(images), plain(images, threes))         # unconditional D ignores labels
    # an unconditional model has no label embedding: its checkpoints stay as they were
    assert not any("embed" in k for k in Generator(size, 16, 8).state_dict())


def test_class_metric_needs_a_conditional_model():
    with pytest.raises(ConfigError, match="'class' measures a conditional model"):
        load_config(None, ["eval.metrics=clf_fid,class"])
    assert load_config(None, ["eval.metrics=clf_fid,class", "model.conditional=true"]).model.conditional


@pytest.fixture(scope="module")
def conditional_run(mnist_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("cond")
    run_train(COND + [f"data.root={mnist_root}", f"train.out_dir={out}", "train.max_steps=20",
                      "train.checkpoint_every=10", "train.num_samples=20"])
    return only_run_dir(out)


def test_conditional_grid_has_a_row_per_digit(conditional_run):
    grid = Image.open(sorted((conditional_run / "samples").glob("samples_ema-*.png"))[-1])
    # 20 samples: 10 rows (digits 0-9) of 2, each image 28 px with make_grid's 2 px padding
    assert grid.size == (2 * 30 + 2, NUM_CLASSES * 30 + 2)


def test_conditional_resume_is_exact(conditional_run, mnist_root, tmp_path):
    """10 steps, then a resume from the step-10 checkpoint to 20, ends where the straight 20-step run ended."""
    run_train(COND + [f"data.root={mnist_root}", f"train.run_dir={tmp_path / 'resumed'}", "train.max_steps=10",
                      "train.num_samples=20"])
    run_train(COND + [f"data.root={mnist_root}", f"train.run_dir={tmp_path / 'resumed'}", "train.max_steps=20",
                      "train.num_samples=20", "train.resume=latest"])
    assert_same_state(load_ckpt(conditional_run, 20), load_ckpt(tmp_path / "resumed", 20))


def test_resuming_with_another_conditional_setting_is_one_line(conditional_run, mnist_root):
    result = run_train(TINY + [f"data.root={mnist_root}", f"train.resume={conditional_run}/checkpoints/ckpt-00000010.pt",
                               "train.max_steps=20"], check=False)
    assert "model.conditional=True but the config says False" in one_line_error(result)


@pytest.mark.distributed
def test_conditional_two_processes_match_one(mnist_root, tmp_path):
    """Synced BatchNorm with labels sharded alongside the images: 2 x B/2 trains like 1 x B."""
    common = COND + [f"data.root={mnist_root}", "train.max_steps=8"]
    params = {}
    for nproc in (1, 2):
        run_train(common + [f"train.out_dir={tmp_path / str(nproc)}"], nproc=nproc)
        state = load_ckpt(only_run_dir(tmp_path / str(nproc)))
        params[nproc] = torch.cat([v.flatten() for part in ("generator", "discriminator")
                                   for k, v in state[part].items() if v.is_floating_point() and "running" not in k])
    assert (params[1] - params[2]).abs().max().item() < 1e-4


def test_generate_draws_the_digit_asked_for(conditional_run, tmp_path):
    from dcgan.generate import main
    assert main(["--checkpoint", str(conditional_run), "--digit", "7", "--num", "9", "--out", str(tmp_path / "7.png")]) == 0
    assert main(["--checkpoint", str(conditional_run), "--digit", "3", "--num", "9", "--out", str(tmp_path / "3.png")]) == 0
    with Image.open(tmp_path / "7.png") as seven, Image.open(tmp_path / "3.png") as three:
        assert seven.size == (3 * 30 + 2, 3 * 30 + 2) and seven.tobytes() != three.tobytes()
    assert main(["--checkpoint", str(conditional_run), "--num", "20", "--out", str(tmp_path / "all.png")]) == 0
    with Image.open(tmp_path / "all.png") as grid:
        assert grid.size == (NUM_CLASSES * 30 + 2, 2 * 30 + 2)           # one column per digit


def test_class_metrics_reward_the_digit_asked_for(mnist_root, tiny_classifier, tmp_path):
    """class_accuracy is the classifier's agreement with the digits the generator was asked for, and per-class
    clf_fid compares each digit's samples with that digit's real images: a generator drawing the wrong digit scores
    worse on both. The expected accuracy is the judge network's own verdict on what the generator drew, against the
    labels it was handed (not the metric's idea of them)."""
    from dcgan.train.data import load_mnist_labels, load_mnist_uint8, to_training_images
    from evaluation.classifier import MNIST_MEAN, MNIST_STD, load_classifier
    from evaluation.metrics import real_images, real_labels
    from evaluation.registry import Measurement, measure
    images = to_training_images(load_mnist_uint8(mnist_root), 28)
    labels = load_mnist_labels(mnist_root)
    reference, reference_labels = real_images(mnist_root, "test", 28, 100), real_labels(mnist_root, "test", 100)
    judge = load_classifier(tiny_classifier)
    values, expected = {}, {}
    for shift in (0, 5):
        generator = DigitLookup(images, labels, shift)
        subject = Measurement(generator, 16, reference, "ref", 100, torch.device("cpu"), 50, 0, tmp_path,
                              classifier_weights=str(tiny_classifier), reference_labels=reference_labels)
        rows = measure(subject, ["class"])
        values[shift] = {r.metric: r.value for r in rows}
        asked, drawn = torch.cat(generator.asked), torch.cat(generator.drawn)
        assert len(asked) == 100
        with torch.no_grad():
            verdict = judge(((drawn + 1) / 2 - MNIST_MEAN) / MNIST_STD)[1].argmax(1)
        expected[shift] = (verdict == asked).float().mean().item()
    assert values[0]["class_accuracy"] == pytest.approx(expected[0], abs=0.011)     # one image may round apart
    assert values[5]["class_accuracy"] == pytest.approx(expected[5], abs=0.011)
    assert values[0]["class_accuracy"] > values[5]["class_accuracy"]
    assert values[0]["clf_fid_per_class"] < values[5]["clf_fid_per_class"]


def test_class_and_cas_metrics_run_during_training_and_from_the_cli(mnist_root, tiny_classifier, tmp_path):
    """The shipped conditional config, one epoch, evaluated after it with its own eval.metrics (`class` among them)
    and `cas`; then `python -m evaluation.fid --metrics class,cas` on the run: both report the same values, since
    both sample the same EMA generator with the same noise (and CAS trains on them with the same seed)."""
    import json
    import subprocess
    import sys
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from support import ROOT, subprocess_env
    run_train(["--config", "configs/mnist32_cond.yaml", f"data.root={mnist_root}", "data.download=false",
               f"train.out_dir={tmp_path}", "train.epochs=1", "train.cpu=true", "eval.every_epochs=1",
               "eval.num_samples=100", f"eval.classifier_weights={tiny_classifier}",
               "eval.metrics=clf_fid,coverage,class,cas"])
    run_dir = only_run_dir(tmp_path)
    assert "class_accuracy" in (run_dir / "train.log").read_text()
    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    values = ("class_accuracy", "clf_fid_per_class", "cas", "cas_real")
    during = {name: events.Scalars(f"eval/{name}")[-1].value for name in values}
    subprocess.run([sys.executable, "-m", "evaluation.fid", "--checkpoint", str(run_dir), "--metrics", "class,cas",
                    "--num-samples", "100", "--classifier-weights", str(tiny_classifier), "--data-root",
                    str(mnist_root), "--device", "cpu", "--cache-dir", str(tmp_path / "cache"), "--json",
                    str(tmp_path / "class.json")], cwd=ROOT, env=subprocess_env(), check=True, capture_output=True)
    cli = {r["metric"]: r for r in json.loads((tmp_path / "class.json").read_text())["results"]}
    assert list(cli) == list(values) and all(r["samples"] == 100 for r in cli.values())
    assert {name: cli[name]["value"] for name in values} == pytest.approx(during, rel=1e-4)
