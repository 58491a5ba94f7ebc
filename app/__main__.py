"""`python -m app check [web|worker|all]`: say which configuration is missing, then exit."""

import sys

from jobs.common.settings import main

sys.exit(main(sys.argv))
