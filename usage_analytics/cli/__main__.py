"""``python -m usage_analytics.cli``: the ``usage-analytics`` command."""

import sys

from . import main

sys.exit(main())
