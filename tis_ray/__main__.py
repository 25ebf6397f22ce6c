"""`python -m tis_ray`: the same as the `tis-ray` command (handy under `ray job submit`)."""

import sys

from .cli import main

sys.exit(main())
