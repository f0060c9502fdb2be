"""E-commerce event lab: ingest API, generator, Airflow pipeline, Spark stream and analyses."""
