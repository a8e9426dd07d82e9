"""Train a DCGAN on MNIST: the same command on 1 CPU, 1 GPU or many (see README.md).

    accelerate launch train_ddp.py --config configs/mnist64.yaml train.epochs=5 data.root=../shared/data
    torchrun --nproc_per_node 2 train_ddp.py --config configs/mnist32.yaml
    python train_ddp.py --config configs/mnist32.yaml --dry-run
"""
from __future__ import annotations

import argparse
import errno
import os
import signal
import sys

import yaml

from dcgan.machinery.checkpoint import CheckpointError
from dcgan.config import ConfigError, load_config
from dcgan.train.data import DataError
from evaluation.common import EvaluationError

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "mnist64.yaml")

# The write failures a user can mend, and how. Every write goes to a temp file first and is renamed only when
# complete (dcgan/machinery/checkpoint.py), so none of them leaves a partial file under a real name.
WRITE_FAILURE_ADVICE = {
    errno.ENOSPC: "free space there or set train.out_dir to another disk",
    errno.EDQUOT: "free space there or set train.out_dir to another disk",
    errno.EFBIG: "raise the file size limit (ulimit -f) or set train.out_dir to another disk",
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="YAML config (default: configs/mnist64.yaml)")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.epochs=2")
    args = parser.parse_intermixed_args(argv)  # options and overrides in any order
    try:
        cfg = load_config(args.config, args.overrides)
        if args.dry_run:
            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False), end="")
            return 0
        from dcgan.train.run import train  # imported late: --dry-run and config errors stay instant
        from evaluation.during_training import evaluator_for
        result = train(cfg, evaluator_for(cfg))
        if result.stopped_by:  # the shell convention for "ended by a signal": 128 + its number
            return 128 + signal.Signals[result.stopped_by].value
    except (ConfigError, DataError, CheckpointError, EvaluationError) as exc:
        print(f"{error_prefix()}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno not in WRITE_FAILURE_ADVICE:
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        print(f"{error_prefix()}: {exc.strerror}{where}: {WRITE_FAILURE_ADVICE[exc.errno]}; the last checkpoint "
              f"written is intact and train.resume=latest continues from it", file=sys.stderr)
        return 2
    return 0


def error_prefix() -> str:
    rank = os.environ.get("RANK")
    return f"error (rank {rank})" if rank not in (None, "0") else "error"


if __name__ == "__main__":
    sys.exit(main())
