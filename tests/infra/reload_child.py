"""The child of tests/infra/test_reload.py: records its start, exits with the next listed
status, or runs on once the list is used up."""

import sys
import time
from pathlib import Path

folder = Path(sys.argv[1])
with (folder / "starts").open("a") as starts:
    starts.write("started\n")
done = len((folder / "starts").read_text().splitlines())
statuses = (folder / "statuses").read_text().split()
if done <= len(statuses):
    sys.exit(int(statuses[done - 1]))
time.sleep(60)
