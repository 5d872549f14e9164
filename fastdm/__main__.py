import sys

from .cli import main
from .distributed import leave

code = main()
leave(code)  # under torchrun: exit here, skipping interpreter teardown (fastdm.distributed.leave)
sys.exit(code)
