"""The global random states (Python, torch CPU, CUDA) a checkpoint carries, so that a resumed run draws what a
straight run would have drawn."""
from __future__ import annotations

import random

import torch


def global_rng_state() -> dict:
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def load_global_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
