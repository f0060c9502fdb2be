"""The live console: the whole pipeline on one page at `http://127.0.0.1:8050/` (`task console`).

`probes`, `spark` and `lake` ask each hop one cheap question; `sampler` runs them on their
schedules and keeps ten minutes of rates; `main` serves the page, its server-sent events and its
static files.
"""
