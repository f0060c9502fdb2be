"""The analyses of the lake and the repeat-purchases table in PostgreSQL."""
