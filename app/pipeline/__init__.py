"""The Airflow pipeline's logic: drain `UserEvents` into MongoDB, keep exact event counts."""
