"""``python -m seg_perception.demo``: run the demo drive (see the package docstring)."""

import sys

from seg_perception.demo.cli import main

sys.exit(main())
