"""`python -m vlmserve ...`: the `vlmserve` command."""

import sys

from vlmserve.cli import main

sys.exit(main())
