from __future__ import annotations

import sys

from sidecar.cli.main import main

sys.exit(main())
