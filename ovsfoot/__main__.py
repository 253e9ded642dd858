import sys

from ovsfoot.cli import main

sys.exit(main())
