"""One place that builds a SparkSession for the coea jobs.

Under ``spark-submit`` the master and resources come from the submit command line and this only names the
app; run as a plain Python process (``coea export``, tests) it starts a small local Spark. The settings that
matter for correctness, not speed, are set in both cases:

- ``spark.sql.session.timeZone = UTC``: timestamps are int64 unix seconds and never become local times.
- ``spark.sql.ansi.enabled = true``: a bad cast fails instead of turning into a silent null.
"""

from __future__ import annotations

import os
import sys
from typing import Any

#: Settings every coea job relies on, whatever the master.
REQUIRED_CONF: dict[str, str] = {
    "spark.sql.session.timeZone": "UTC",
    "spark.sql.ansi.enabled": "true",
}

#: Defaults for a local run on a small machine (overridable through ``conf``).
LOCAL_CONF: dict[str, str] = {
    "spark.sql.shuffle.partitions": "4",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.memory": "1g",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
}


def get_spark(app_name: str = "coea", *, master: str | None = None, conf: dict[str, str] | None = None) -> Any:
    """Return the active SparkSession, or build one.

    Args:
        app_name: Spark application name.
        master: e.g. ``"local[2]"``. ``None`` keeps what spark-submit configured, else ``$COEA_SPARK_MASTER``,
            else ``local[2]``.
        conf: extra Spark settings; they override :data:`LOCAL_CONF` (not :data:`REQUIRED_CONF`).

    Raises:
        RuntimeError: pyspark is not installed (``pip install 'coea[spark]'``).
    """
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:  # the spark extra is optional
        raise RuntimeError("pyspark is not installed; install the spark extra: pip install 'coea[spark]'") from exc

    active = SparkSession.getActiveSession()
    if active is not None:
        for key, value in REQUIRED_CONF.items():
            active.conf.set(key, value)
        return active

    builder = SparkSession.builder.appName(app_name)
    # spark-submit starts the Python driver with a gateway already running; then its --master wins.
    under_submit = "PYSPARK_GATEWAY_PORT" in os.environ
    if master is None and not under_submit:
        master = os.environ.get("COEA_SPARK_MASTER", "local[2]")
    if master is not None:
        # Local workers must run this interpreter (it has coea, storage and pandas/pyarrow installed).
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = builder.master(master)
        for key, value in {**LOCAL_CONF, **(conf or {})}.items():
            builder = builder.config(key, value)
    elif conf:
        for key, value in conf.items():
            builder = builder.config(key, value)
    for key, value in REQUIRED_CONF.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
