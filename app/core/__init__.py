"""The plumbing every part of the lab stands on; nothing here knows a hop's logic.

- `config.py`: the one settings object (every endpoint, name and limit; `.env` / environment).
  To add a setting: a typed field here, then `python scripts/write_env_example.py`.
- `clients.py`: every client of Kafka, MongoDB, S3 and PostgreSQL, built from the settings.
- `topics.py`: the lab's Kafka topics, their offsets, lag, gaps and replicas.
- `errors.py`: `LabError`, the base of every error worded for a person; `ServiceAway` and the
  exit status that asks to be started again.
- `process.py`: start, watch and stop local processes (pid files checked by start time).
- `reload.py`: live reload for the Procfile's processes; `logs.py`: one logging setup.
- `airflow_api.py`: Airflow's REST API with the lab's login.
- `identifier_chars.py`: the characters an id may hold (generated; see its docstring).
"""
