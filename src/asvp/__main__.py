import sys

from asvp.cli import main

sys.exit(main())
