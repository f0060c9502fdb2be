"""The lake: raw purchases as Parquet on S3, written by the Spark stream (`python -m app.lake`).

- `stream.py`: runs the job (writer lock, outages, stop); `queries.py`: its two file-sink
  queries (valid orders, quarantine); `parse.py`: a message -> an order or its reasons;
  `rules.py` and `schema.py`: the checks and the Spark schema, derived from `app/schemas.py`.
- `sink_log.py`: the sink's commit log (which files count, orphans); `writer_lock.py`: one
  writer per checkpoint (a fenced S3 lease); `failures.py`: outage or error, said once.
- `gaps.py`: `task lake-ack-gap`; `reset.py`: `task lake-reset`.
- `session.py`: the lab's SparkSession (also the notebooks'), `log4j2.properties` its log;
  `jars.py`: connector jars; `storage.py`: S3 paths for Python code.
"""
