"""The lake: raw purchases as Parquet on S3, written by the Spark stream."""
