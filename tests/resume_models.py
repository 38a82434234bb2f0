"""A model for the resume tests: ``--model tests.resume_models:StallingNet``.

With ``FEDLIGHT_TEST_STALL_AT=N`` and ``FEDLIGHT_TEST_STALL_MARKER=PATH`` in
the environment, its Nth forward pass in training mode (counted over the
process) writes the marker file and sleeps, so that a test knows the run is
in the middle of a round's local training and can kill it there. Without
them it is a plain MLP with dropout, so that a resumed run must also restore
the random generator dropout draws from.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from torch import nn


class StallingNet(nn.Module):
    """Flatten, Linear, ReLU, Dropout(0.2), Linear."""

    calls = 0

    def __init__(self, input_shape, num_classes, hidden: int = 16):
        super().__init__()
        features = 1
        for size in input_shape:
            features *= size
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Dropout(0.2),
                                 nn.Linear(hidden, num_classes))

    def forward(self, x):
        if self.training:
            StallingNet.calls += 1
            stall_at = os.environ.get("FEDLIGHT_TEST_STALL_AT")
            if stall_at and StallingNet.calls == int(stall_at):
                Path(os.environ["FEDLIGHT_TEST_STALL_MARKER"]).write_text(str(os.getpid()))
                time.sleep(120)
        return self.net(x)
