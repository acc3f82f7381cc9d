"""`python -m tollgate`: the tollgate command line."""

import sys

from tollgate.engine.ops.cli import main

sys.exit(main())
