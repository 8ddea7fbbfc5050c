import sys

from dlm_guard.cli import main

sys.exit(main())
