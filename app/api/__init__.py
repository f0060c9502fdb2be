"""Ingest API: `PUT /SendEvent` and `POST /PurchasedItems` into Kafka (`python -m app.api`).

- `routes.py`: the two endpoints and `/health`, thin; `main.py`: the app and its lifespan.
- `ingest.py`: a body to Kafka records (parsing, validation against `app.schemas`);
  `fast_path.py`: the same for valid bodies, faster; `validation.py`: large bodies in workers.
- `producer.py`: the Kafka producer (`acks=all`; a 2xx means stored); `errors.py`: 4xx/5xx bodies.
- `metrics.py`: `/metrics`; `server.py`: uvicorn with the lab's time-outs and live reload.

To accept a new field, change the record in `app/schemas.py`, not here.
"""
