"""The four analyses of the lake and the repeat-purchases table (`task analyze`, the notebooks).

- `purchases.py`: the analyses in Spark (one order per `OrderId`, best sellers, payment types,
  top customers of the last hour, repeat purchases); `conflicts.py`: which version of an
  `OrderId` counts, the same rule in Spark and pyarrow.
- `repeat_store.py`: the PostgreSQL table, replaced in one transaction.
- `run.py`: `task analyze`, the notebooks headless into `reports/`.
"""
