"""Data generator: Faker shoppers sent to the ingest API every second (`python -m app.generator`).

- `crowd.py`: who the shoppers are and what they do (to change the fake data, start here).
- `sender.py`: sending with retries, counting every record's fate.
- `http_client.py`: the lean keep-alive HTTP/1.1 client the sender speaks through.
- `runner.py`: the one-second cadence, the status line and the summary.
- `processes.py`: `--processes N`, each with its own seed, connections and record file.
"""
