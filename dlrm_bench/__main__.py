import sys

from dlrm_bench.cli import main

# Guarded so multiprocessing's spawn start method can import this module safely.
if __name__ == "__main__":
    sys.exit(main())
