"""The live console: the whole pipeline on one page at `http://127.0.0.1:8050/` (`task console`).

`probes.py` (API, Kafka, Airflow, MongoDB, PostgreSQL), `stream_probe.py` (the Spark stream's
checkpoint) and `lake_probe.py` (the lake's files, best sellers) ask each hop one cheap question,
reading shared figures from `app/figures.py`; `sampler.py` runs them on their schedules and keeps
ten minutes of rates; `main.py` serves the page (`templates/`, `static/`), its server-sent events
and its static files. To show a new figure: add it to a probe's reading, then to `console.js`.
"""
