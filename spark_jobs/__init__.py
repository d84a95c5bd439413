"""PySpark jobs (docs/spark.md): ``build_sequences`` (raw logs -> sequences and keys) and ``export_kv`` (promoted
round -> Parquet tables for serving, reconciled; per-range SST files). Depends only on ``storage`` and the data
schema; pyspark is imported inside the jobs, so importing this package does not need it."""
