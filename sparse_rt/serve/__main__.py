"""`python -m sparse_rt.serve MODEL ...`: the same as `python -m sparse_rt serve MODEL ...`."""

import sys

from sparse_rt.serve.cli import main

sys.exit(main(sys.argv[1:]))
