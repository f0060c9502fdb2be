"""Ingest API: `PUT /SendEvent` and `POST /PurchasedItems` into Kafka (see `app.api.main`)."""
