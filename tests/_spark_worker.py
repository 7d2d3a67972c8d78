"""Spark for the interop suite, in a process of its own.

pyspark lives outside the test environment (``make spark`` installs it into
``.venv/pyspark``): installed beside pandera it is imported by pandera in every process, which
slows every import and warns under pandas 3. This worker runs with that folder on its path and
starts one local Spark session; for each request on stdin (a JSON object with the data
``files`` to read and the ``out`` file to write) it reads the files with Spark, writes the rows
to ``out`` as Parquet (through pandas, as ``toPandas`` gives them) and answers one line:
``ok`` or the error.
"""

from __future__ import annotations

import json
import sys
import traceback
import warnings


def main() -> int:
    warnings.simplefilter("ignore")  # pyspark's own warnings under pandas 3
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[1]")
        .appName("usage_analytics-interop")
        .config("spark.ui.enabled", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    print("ready", flush=True)
    for line in sys.stdin:
        try:
            request = json.loads(line)
            frame = session.read.parquet(*request["files"]).toPandas()
            frame.to_parquet(request["out"])
            answer = "ok"
        except Exception:
            answer = json.dumps(traceback.format_exc())
        print(answer, flush=True)
    session.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
