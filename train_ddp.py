"""Train a DCGAN on MNIST: the same command on 1 CPU, 1 GPU or many (see README.md).

    accelerate launch train_ddp.py --config configs/mnist64.yaml train.epochs=5 data.root=../shared/data
    torchrun --nproc_per_node 2 train_ddp.py --config configs/mnist32.yaml
    python train_ddp.py --config configs/mnist32.yaml --dry-run
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

import yaml

from dcgan.checkpoint import CheckpointError
from dcgan.config import ConfigError, load_config
from dcgan.data import DataError

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "mnist64.yaml")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="YAML config (default: configs/mnist64.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.epochs=2")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        if args.dry_run:
            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            return 0
        from dcgan.training import train  # imported late: --dry-run and config errors stay instant
        result = train(cfg)
        if result.stopped_by:  # the shell convention for "ended by a signal": 128 + its number
            return 128 + signal.Signals[result.stopped_by].value
    except (ConfigError, DataError, CheckpointError) as exc:
        rank = os.environ.get("RANK")
        prefix = f"error (rank {rank})" if rank not in (None, "0") else "error"
        print(f"{prefix}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
