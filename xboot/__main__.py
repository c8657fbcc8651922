import sys

from xboot.cli import main

sys.exit(main())
