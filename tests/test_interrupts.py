import os
import signal

import pytest

from fedlight.interrupts import Terminated, terminate_as_interrupt


def test_sigterm_raises_like_ctrl_c_inside_the_block_and_the_old_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt) as raised, terminate_as_interrupt():
        os.kill(os.getpid(), signal.SIGTERM)
    assert isinstance(raised.value, Terminated)
    assert signal.getsignal(signal.SIGTERM) is before
