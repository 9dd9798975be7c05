import sys

from vreason.cli import main

sys.exit(main())
