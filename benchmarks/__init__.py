"""The side-by-side benchmark of ``usage_analytics`` against plain pyarrow, DuckDB and SQLite.

Run it from the repository root with ``python -m benchmarks.run --help`` (or ``make bench``).
"""
