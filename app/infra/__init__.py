"""The lab's four services, in Docker or as local processes (`python -m app.infra`).

- `cli.py`: the commands; `lifecycle.py`: install, up, down; `report.py`: infra-status;
  `doctor.py`: task doctor; `mode.py`: Docker or local; `compose.py`: Docker mode.
- `local_service.py`: the base of a local service; `services.py` lists them: `kafka.py`,
  `mongo.py`, `s3.py`, `postgres.py` (each fetches or builds, starts and stops its server;
  their build files are in `infra/`); `spark_cluster.py`: the optional standalone cluster.
- `bootstrap.py`: topics, bucket, indexes and tables; `binaries.py`, `browser.py`: tools.

To change a port or credential, change `app/core/config.py`; both modes follow.
"""
