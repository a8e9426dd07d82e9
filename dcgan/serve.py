"""A web page that draws digits on demand with a trained generator.

    python -m dcgan.serve --checkpoint runs/000-mnist32_cond            # then open http://127.0.0.1:7860
    python -m dcgan.serve --checkpoint runs/000-mnist64/generator.safetensors --port 8000 --host 0.0.0.0

The page asks for a digit (conditional models; "random" otherwise), a seed and a count, and shows the grid, or a
latent walk through 4 points as a GIF. It is one HTML page on Starlette (served by uvicorn), an optional dependency
(pip install -r requirements-serve.txt): a handful of plain endpoints are all a demo needs, and the page is
ours to test in a browser. Endpoints: / (the page), /grid.png and /walk.gif (?digit=&seed=&count=), /info.
Generation runs on the GPU when there is one; a generator.onnx (python -m dcgan.export) runs on ONNX Runtime, without
torch. A bad request gets a one-line message (HTTP 400); the server goes on.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from dcgan.generate import MAX_SEED, digits_to_draw, sample_noise, to_grid, walk_noise
from dcgan.generators import DIGITS, ModelFileError, open_generator

MAX_COUNT = 64
WALK_FRAMES_BETWEEN = 12


class BadRequest(ValueError):
    """What the page shows the user; the message is one line."""


class DigitDrawer:
    """The loaded generator and what the endpoints ask of it; one request draws at a time."""

    def __init__(self, checkpoint: str, device: str = "auto"):
        self.G = open_generator(checkpoint, True, device)
        self.source = checkpoint
        self.lock = threading.Lock()

    def request(self, query) -> tuple[int | None, int, int]:
        """(digit or None, seed, count) from the query string; BadRequest says what is wrong."""
        digit_text = query.get("digit", "random").strip() or "random"
        digit = None if digit_text == "random" else _integer(query, "digit", "0")
        if digit is not None and not self.G.conditional:
            raise BadRequest("this generator is unconditional: it draws random digits only")
        if digit is not None and not 0 <= digit < DIGITS:
            raise BadRequest(f"digit must be 0 to 9 or random, not {digit}")
        seed, count = _integer(query, "seed", "0"), _integer(query, "count", "16")
        if not 1 <= count <= MAX_COUNT:
            raise BadRequest(f"count must be 1 to {MAX_COUNT}, not {count}")
        if not 0 <= seed <= MAX_SEED:
            raise BadRequest(f"seed must be 0 to {MAX_SEED}, not {seed}")
        return digit, seed, count

    def grid_png(self, digit: int | None, seed: int, count: int) -> bytes:
        labels, nrow = digits_to_draw(count, digit, self.G.conditional)
        with self.lock:
            images = self.G(sample_noise(count, self.G.nz, seed), labels)
        return iio.imwrite("<bytes>", to_grid(images, nrow), extension=".png")

    def walk_gif(self, digit: int | None, seed: int, count: int) -> bytes:
        labels, nrow = digits_to_draw(count, digit, self.G.conditional)
        with self.lock:
            frames = [to_grid(self.G(z, labels), nrow) for z in walk_noise(count, self.G.nz, seed,
                                                                          WALK_FRAMES_BETWEEN, 0.0)]
        return iio.imwrite("<bytes>", np.stack(frames), extension=".gif", duration=1000 / 12, loop=0)

    def info(self) -> dict:
        return {"checkpoint": self.source, "conditional": self.G.conditional, "image_size": self.G.image_size,
                "max_count": MAX_COUNT}


def _integer(query, name: str, default: str) -> int:
    text = query.get(name, default).strip() or default
    try:
        return int(text)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, not '{text}'") from None


class DigitPage:
    """The endpoints, as methods over one DigitDrawer."""

    def __init__(self, drawer: DigitDrawer):
        self.drawer = drawer

    def page(self, request):
        from starlette.responses import HTMLResponse
        return HTMLResponse(PAGE.replace("{{INFO}}", json.dumps(self.drawer.info()).replace("<", "\\u003c")))

    def grid(self, request):
        return self.picture(self.drawer.grid_png, request, "image/png")

    def walk(self, request):
        return self.picture(self.drawer.walk_gif, request, "image/gif")

    def info(self, request):
        from starlette.responses import JSONResponse
        return JSONResponse(self.drawer.info())

    def picture(self, draw, request, media_type: str):
        from starlette.responses import PlainTextResponse, Response
        try:
            return Response(draw(*self.drawer.request(request.query_params)), media_type=media_type)
        except BadRequest as exc:
            return PlainTextResponse(str(exc), status_code=400)


def build_app(drawer: DigitDrawer):
    from starlette.applications import Starlette
    from starlette.routing import Route
    endpoints = DigitPage(drawer)
    return Starlette(routes=[Route("/", endpoints.page), Route("/grid.png", endpoints.grid),
                             Route("/walk.gif", endpoints.walk), Route("/info", endpoints.info)])


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>DCGAN digits</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 2em; max-width: 52em; }
 label { margin-right: 1em; } input { width: 5em; } #message { color: #b00020; min-height: 1.5em; }
 #result { image-rendering: pixelated; width: 28em; max-width: 100%; border: 1px solid #ccc; }
</style></head>
<body>
<h1>Draw digits with the DCGAN</h1>
<p id="about"></p>
<form id="controls">
 <label>Digit <select id="digit" name="digit"><option value="random">random</option></select></label>
 <label>Seed <input id="seed" name="seed" type="number" value="0"></label>
 <label>Count <input id="count" name="count" type="number" value="16"></label>
 <button id="generate" type="submit">Generate</button>
 <button id="walk" type="button">Latent walk</button>
</form>
<p id="message" role="alert"></p>
<img id="result" alt="generated digits">
<script>
const info = {{INFO}};
document.getElementById("about").textContent = (info.conditional ? "Conditional" : "Unconditional") +
  " generator, " + info.image_size + " px, from " + info.checkpoint + ".";
const digit = document.getElementById("digit");
for (let d = 0; d < 10; d++) {
  const option = new Option(String(d), String(d));
  option.disabled = !info.conditional;
  digit.add(option);
}
async function show(kind) {
  const query = new URLSearchParams(new FormData(document.getElementById("controls")));
  const url = "/" + kind + "?" + query.toString();
  const message = document.getElementById("message");
  message.textContent = "drawing...";
  const response = await fetch(url);
  if (!response.ok) { message.textContent = await response.text(); return; }
  const image = document.getElementById("result");
  image.onload = () => { message.textContent = ""; };
  image.dataset.source = url;
  image.src = URL.createObjectURL(await response.blob());
}
document.getElementById("controls").addEventListener("submit", (event) => { event.preventDefault(); show("grid.png"); });
document.getElementById("walk").addEventListener("click", () => show("walk.gif"));
show("grid.png");
</script>
</body></html>
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True,
                        help="run dir, ckpt-*.pt, or exported generator.pt / .safetensors / .onnx (no torch needed)")
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to serve other machines too")
    parser.add_argument("--device", default="auto", help="PyTorch generators: cpu, cuda, ... (auto: the GPU if any)")
    args = parser.parse_intermixed_args(argv)
    try:
        import uvicorn
    except ImportError:
        print("error: the web page needs its optional dependencies: pip install -r requirements-serve.txt",
              file=sys.stderr)
        return 2
    try:
        drawer = DigitDrawer(args.checkpoint, args.device)
    except ModelFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"serving {Path(args.checkpoint)} on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(build_app(drawer), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
