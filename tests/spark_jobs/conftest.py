"""One local SparkSession for every Spark test (starting Spark costs seconds; the machine has 2 cores)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys

import pytest


def _missing() -> str | None:
    if importlib.util.find_spec("pyspark") is None:
        return "spark: pyspark is not installed (pip install 'coea[spark]')"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "spark: Java is not installed (Spark needs a JRE 17; .ci/run installs it)"
    return None


@pytest.fixture(scope="session")
def spark():
    reason = _missing()
    if reason:
        pytest.skip(reason)
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from spark_jobs.session import get_spark

    session = get_spark("coea-tests", master="local[2]", conf={
        "spark.sql.shuffle.partitions": "2",
        "spark.default.parallelism": "2",
        "spark.ui.enabled": "false",
        "spark.driver.memory": "1g",
        # Tiny data: compiling generated code and re-planning cost more than they save.
        "spark.sql.codegen.wholeStage": "false",
        "spark.sql.adaptive.enabled": "false",
    })
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
