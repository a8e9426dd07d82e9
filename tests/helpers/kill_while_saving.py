"""Run train_ddp.py as usual, except that the process SIGKILLs itself halfway through writing its Nth checkpoint.

    python tests/helpers/kill_while_saving.py N key=value ...

A real SIGKILL, at the worst moment: half of the checkpoint's bytes are in the temp file that dcgan.checkpoint
writes before renaming it. (Only the timing is arranged here; what the kill leaves behind is what a kill during
the real write leaves: a partial temp file, never a partial checkpoint.)
"""
import os
import signal
import sys
from pathlib import Path

import dcgan.checkpoint as ckpt
import train_ddp

DIE_AT = int(sys.argv.pop(1))
written = []
real_write = ckpt.atomic_write


def write_or_die(path: Path, data) -> None:
    if Path(path).name.startswith("ckpt-"):
        written.append(path)
        if len(written) == DIE_AT:
            tmp = Path(path).with_name(f".{Path(path).name}.tmp{os.getpid()}")
            with open(tmp, "wb") as fh:
                fh.write(bytes(data)[: len(data) // 2])
            os.kill(os.getpid(), signal.SIGKILL)
    real_write(path, data)


ckpt.atomic_write = write_or_die
sys.exit(train_ddp.main(sys.argv[1:]))
