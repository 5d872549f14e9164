"""``fastdm`` with one rank made to fail, for tests/test_distributed.py (a torchrun entry point,
kept out of fastdm's own loop): ``failing_rank.py RANK ITERATION raise|kill ARGS...`` runs
``fastdm ARGS`` and makes rank RANK fail before iteration ITERATION, by an exception or by
SIGKILL as the OOM killer would."""
import os
import signal
import sys

from fastdm.cli import main
from fastdm.engine import DMEngine

rank, at, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
step = DMEngine.step


def failing_step(self, state, **kw):
    if os.environ.get("RANK") == rank and state.iteration == at:
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"injected failure (rank {rank}, iteration {at})")
    return step(self, state, **kw)


DMEngine.step = failing_step
sys.exit(main(sys.argv[4:]))
