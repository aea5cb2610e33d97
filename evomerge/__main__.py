import sys

from evomerge.interface.cli import main

sys.exit(main())
