import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _figure_labels_reset():
    """notebook.start sets a watermark and footer for every later figure: keep each test's
    own."""
    yield
    from qdgs_lib import plots

    plots.set_watermark(None)
    plots.set_footer(None)
