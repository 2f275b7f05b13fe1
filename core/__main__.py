import sys

from tuneforge.cli import main

sys.exit(main())
