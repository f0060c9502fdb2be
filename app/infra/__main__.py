import sys

from app.infra.cli import main

sys.exit(main())
