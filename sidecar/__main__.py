from __future__ import annotations

import sys

from sidecar.cli.commands import main

sys.exit(main())
