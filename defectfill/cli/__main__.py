import sys

from defectfill.cli.main import main

sys.exit(main())
