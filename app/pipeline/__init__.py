"""The Airflow pipeline's logic (`dags/user_events_pipeline.py` only calls it), tested without
Airflow.

- `drain.py`: task 1, Kafka `UserEvents` -> MongoDB, exactly once (the consumer loop, offsets,
  resets, retention gaps); `documents.py`: the documents it stores (event identity,
  quarantine, pending batches), pure functions.
- `counts.py`: task 2, exact `EventCount`s from the pending batches, safe when runs overlap.
- `store.py`: the MongoDB reads and writes both need.

To add a DAG task: a function here taking the settings and returning a small summary, tested in
`tests/pipeline/`, and a thin `@task` in the DAG that imports and calls it.
"""
