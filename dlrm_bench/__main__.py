import sys

from dlrm_bench.cli import main

sys.exit(main())
