"""What every module of the evaluation package shares: its error type and its cache folder."""
from __future__ import annotations

import os
from pathlib import Path


class EvaluationError(RuntimeError):
    """User-facing evaluation problem; the message is one line."""


def cache_dir() -> Path:
    """Classifier weights and cached reference statistics ($DCGAN_CACHE, default ~/.cache/dcgan-ddp)."""
    return Path(os.environ.get("DCGAN_CACHE", Path.home() / ".cache" / "dcgan-ddp"))
