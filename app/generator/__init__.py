"""Data generator: Faker shoppers sent to the ingest API every second (`-m app.generator`)."""
