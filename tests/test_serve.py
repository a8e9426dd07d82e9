"""`python -m dcgan.serve` in a real browser: headless Chromium (Debian's package, installed here when missing, as
the SLURM tests install SLURM) driven by Selenium. The page draws the digit asked for, exactly as
`python -m dcgan.generate --digit` draws it; a bad request shows its message and the server goes on serving."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from PIL import Image

from support import ROOT, SHARED, TINY, free_port, only_run_dir, run_train, subprocess_env

pytest.importorskip("selenium", reason="the browser test drives Chromium with selenium (requirements-dev.txt)")
pytest.importorskip("starlette", reason="the web page is optional: pip install -r requirements-serve.txt")


def chromium() -> tuple[str, str]:
    """(chromium, chromedriver) paths; installed with apt-get when missing (root only), else the test skips."""
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if all(found):
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("headless Chromium is not installed (apt-get install chromium chromium-driver needs root)")
    install = subprocess.run(["apt-get", "install", "-y", "-q", "chromium", "chromium-driver"], capture_output=True,
                             text=True, timeout=900, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if install.returncode != 0 or not all(found):
        pytest.skip(f"could not install Chromium: {(install.stderr or install.stdout).strip().splitlines()[-1:]}")
    return found


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    binary, driver = chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1000,900"):
        options.add_argument(flag)
    page = webdriver.Chrome(service=Service(driver), options=options)
    yield page
    page.quit()


class Server:
    """`python -m dcgan.serve --checkpoint RUN --port PORT`, as typed, until the test module ends."""

    def __init__(self, checkpoint, env: dict | None = None, cwd=ROOT):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([sys.executable, "-m", "dcgan.serve", "--checkpoint", str(checkpoint),
                                         "--port", str(self.port)], cwd=cwd, env=env or subprocess_env(),
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{self.url}/info", timeout=2)
                return
            except OSError:
                assert self.process.poll() is None, self.process.stdout.read()
                assert time.time() < deadline, "the server never answered"
                time.sleep(0.2)

    def get(self, path: str) -> bytes:
        return urllib.request.urlopen(f"{self.url}{path}", timeout=60).read()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(mnist_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve")
    run_train(TINY + [f"data.root={mnist_root}", f"train.out_dir={out}", "train.max_steps=16",
                      "model.conditional=true"])
    running = Server(only_run_dir(out))
    yield running, only_run_dir(out)
    running.stop()


def ask(browser, server: Server, digit: str, count: int, seed: int = 3) -> str:
    """Fill in the form as a user does, press Generate, and wait for the picture or a message; returns the message."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait
    if not browser.current_url.startswith(server.url):
        browser.get(server.url)  # the page draws a first grid on its own: wait for it
        WebDriverWait(browser, 30).until(lambda b: b.execute_script("return document.getElementById('message')"
                                                                    ".textContent === ''"))
    Select(browser.find_element(By.ID, "digit")).select_by_value(digit)
    for name, value in (("seed", seed), ("count", count)):
        field = browser.find_element(By.ID, name)
        field.clear()
        field.send_keys(str(value))
    browser.find_element(By.ID, "generate").click()
    WebDriverWait(browser, 60).until(lambda b: b.execute_script(
        "const m = document.getElementById('message').textContent;"
        "return m !== 'drawing...' && (m !== '' || document.getElementById('result').complete);"))
    return browser.execute_script("return document.getElementById('message').textContent")


def shown_pixels(browser) -> Image.Image:
    """The picture the page shows, read back from the browser (drawn onto a canvas)."""
    import base64
    data = browser.execute_script(
        "const img = document.getElementById('result'); const c = document.createElement('canvas');"
        "c.width = img.naturalWidth; c.height = img.naturalHeight; c.getContext('2d').drawImage(img, 0, 0);"
        "return c.toDataURL('image/png');")
    return Image.open(io.BytesIO(base64.b64decode(data.split(",", 1)[1]))).convert("L")


def test_page_draws_the_digit_asked_for(browser, server, tmp_path):
    running, run_dir = server
    assert ask(browser, running, "7", 16) == ""
    shown = shown_pixels(browser)
    assert shown.size == (4 * 30 + 2, 4 * 30 + 2)
    lo, hi = shown.getextrema()
    assert hi - lo > 50                                                   # not a blank picture
    from dcgan.generate import main as generate
    assert generate(["--checkpoint", str(run_dir), "--digit", "7", "--num", "16", "--seed", "3",
                     "--out", str(tmp_path / "7.png")]) == 0
    assert shown.tobytes() == Image.open(tmp_path / "7.png").convert("L").tobytes()   # exactly the CLI's 7s
    assert ask(browser, running, "2", 16) == "" and shown_pixels(browser).tobytes() != shown.tobytes()


def test_bad_requests_show_a_message_and_the_server_goes_on(browser, server):
    running, _ = server
    assert ask(browser, running, "7", 1000) == "count must be 1 to 64, not 1000"
    assert ask(browser, running, "7", 0) == "count must be 1 to 64, not 0"
    assert ask(browser, running, "random", 4) == ""
    assert shown_pixels(browser).size == (2 * 30 + 2, 2 * 30 + 2)
    assert b"digit must be 0 to 9" in _error(running, "/grid.png?digit=12")


@pytest.mark.parametrize("query", ["seed=" + "9" * 23, "seed=-1", "seed=1e3", "count=" + "9" * 30, "digit=" + "9" * 30,
                                   "seed=0x10", "digit=7.5"])
@pytest.mark.parametrize("endpoint", ["/grid.png", "/walk.gif"])
def test_every_malformed_query_is_a_one_line_400(server, endpoint, query):
    running, _ = server
    message = _error(running, f"{endpoint}?{query}").decode()
    assert len(message.splitlines()) == 1 and message.split(" ")[0] in ("seed", "count", "digit"), message
    assert running.get(f"{endpoint}?digit=3&seed=5&count=4")[:4] in (b"\x89PNG", b"GIF8")   # still serving


def test_latent_walk_is_an_animation(browser, server):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    running, _ = server
    ask(browser, running, "5", 4)
    browser.find_element(By.ID, "walk").click()
    WebDriverWait(browser, 60).until(lambda b: "walk.gif" in (b.execute_script(
        "return document.getElementById('result').dataset.source") or ""))
    gif = Image.open(io.BytesIO(running.get("/walk.gif?digit=5&seed=3&count=4")))
    assert gif.format == "GIF" and gif.n_frames == 4 * 12


def _error(server: Server, path: str) -> bytes:
    try:
        server.get(path)
    except urllib.error.HTTPError as exc:
        assert exc.code == 400
        return exc.read()
    raise AssertionError(f"{path} was accepted")


@pytest.mark.slow
def test_real_model_draws_sevens(browser, real_classifier, tmp_path):
    """A conditional model trained on real MNIST (2 CPU epochs at 32 px) behind the page: the classifier reads most
    of the digits the page draws for '7' as 7s. The README's screenshot is this page (saved as page.png here), served
    as a user serves it: from the run's name under runs/, which the page shows."""
    from evaluation.classifier import load_classifier, prepare
    run_train(["--config", "configs/mnist32_cond.yaml", f"data.root={SHARED / 'data'}",
               f"train.out_dir={tmp_path / 'runs'}", "train.epochs=2", "data.download=false"], timeout=900)
    running = Server(Path("runs") / only_run_dir(tmp_path / "runs").name, cwd=tmp_path)
    try:
        assert ask(browser, running, "7", 16) == ""
        about = browser.execute_script("return document.getElementById('about').textContent")
        assert "from runs/000-mnist32_cond." in about, about
        browser.save_screenshot(str(tmp_path / "page.png"))
        print(f"screenshot: {tmp_path / 'page.png'}")
        grid = torch.tensor(list(shown_pixels(browser).getdata()), dtype=torch.uint8).view(4 * 34 + 2, 4 * 34 + 2)
    finally:
        running.stop()
    digits = torch.stack([grid[2 + 34 * r: 34 * (r + 1), 2 + 34 * c: 34 * (c + 1)] for r in range(4) for c in range(4)])
    with torch.no_grad():
        logits = load_classifier(real_classifier)(prepare(digits.unsqueeze(1).repeat(1, 3, 1, 1)))[1]
    sevens = int((logits.argmax(1) == 7).sum())
    print(f"classifier reads {sevens}/16 of the page's '7's as 7")
    assert sevens >= 12
