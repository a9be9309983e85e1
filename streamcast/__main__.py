import sys

from streamcast.cli import main

sys.exit(main())
