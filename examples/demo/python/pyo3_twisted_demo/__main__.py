"""``python -m pyo3_twisted_demo``: run the demo service (see :mod:`pyo3_twisted_demo.app`)."""

import sys

from .app import main

sys.exit(main())
