"""``python -m rangecps.vis``: the ``rangecps-vis`` command without its console script."""

import sys

from rangecps.vis.main import vis_main

sys.exit(vis_main())
