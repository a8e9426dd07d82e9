"""Run train_ddp.py as usual, except that the kernel kills the process when a file it writes grows past LIMIT bytes.

    python tests/helpers/kill_while_saving.py LIMIT key=value ...

The file size limit (RLIMIT_FSIZE, what `ulimit -f` sets) makes the kernel send SIGXFSZ to a process whose write
would pass it; its default action ends the process at once, in the middle of that write() call. Python ignores
SIGXFSZ at start-up (a write past the limit then fails with EFBIG instead), so it is given back its default here.
With LIMIT between the size of the run's small files (log, events, grids) and a checkpoint's, the real writer
(dcgan.machinery.checkpoint.atomic_write) is killed partway through the next checkpoint, its first LIMIT bytes on disk.
"""
import resource
import signal
import sys

import train_ddp

limit = int(sys.argv.pop(1))
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))        # a killed process leaves no core file behind
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
sys.exit(train_ddp.main(sys.argv[1:]))
