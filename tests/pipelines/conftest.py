"""The pipelines import their shared helpers as a top-level module (``from common import ...``)."""

import sys

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "pipelines"))
