"""``python -m usage_analytics.cli``: the ``usage-analytics`` command."""

from . import run

run()
