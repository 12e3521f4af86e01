"""`python -m dbl_ps ...` is the `dbl-ps` command; launchers start it this way:
`torchrun --nproc_per_node N -m dbl_ps train ...`, `deepspeed --num_gpus N --module dbl_ps train ...`."""

import sys

from dbl_ps.cli import main

code = main()
# CPython marks the interpreter "stopped by an unhandled Ctrl-C" when a KeyboardInterrupt leaves
# a string exec(), even one caught further up (a stop signal during scipy's import does this:
# its array_api_compat runs one). Under `python -m` the interpreter then kills itself with SIGINT
# at exit instead of returning `code` (130 for a stop, 2 for an error). Each string exec() starts
# by clearing that mark, so one that completes leaves the status ours. (The `dbl-ps` script and
# `python -c` exit through another path that never reads the mark.)
exec("pass")
sys.exit(code)
