"""``python -m uncertainty_robust --defense at_entm --lam 0.5 --eps 0.3``: one trial (same as ``ur-train``)."""

import sys

from .cli import main

sys.exit(main())
