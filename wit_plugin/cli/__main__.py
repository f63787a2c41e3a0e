import sys

from wit_plugin.cli import main

sys.exit(main())
