import sys

from physrl.cli import main

sys.exit(main())
