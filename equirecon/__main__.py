import sys

from equirecon.cli import main

sys.exit(main())
