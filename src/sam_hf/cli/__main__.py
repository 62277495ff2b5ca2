"""`python -m sam_hf.cli`: the `sam-hf` command."""

import sys

from . import main

sys.exit(main())
