"""`python -m dbl_ps ...` is the `dbl-ps` command; launchers start it this way:
`torchrun --nproc_per_node N -m dbl_ps train ...`, `deepspeed --num_gpus N --module dbl_ps train ...`."""

import sys

from dbl_ps.cli import main

sys.exit(main())
