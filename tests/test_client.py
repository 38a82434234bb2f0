import pytest
import torch
from lightning.pytorch import Callback

from fedlight.client import ClientModule, fit_client, make_loader
from fedlight.interrupts import Terminated
from fedlight.models import build_model


class _InterruptAtFirstBatch(Callback):
    def __init__(self, interrupt):
        self.interrupt = interrupt

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        raise self.interrupt


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt(), Terminated()])
def test_an_interrupt_inside_fit_stays_an_interrupt(interrupt):
    # Lightning turns it into sys.exit(1), which would end the MLflow run FAILED
    module = ClientModule(build_model("small_cnn", input_shape=(1, 8, 8), num_classes=3), lr=0.1)
    loader = make_loader(torch.zeros(4, 1, 8, 8), torch.zeros(4, dtype=torch.long), batch_size=2, seed=0)
    with pytest.raises(type(interrupt)):
        fit_client(module, loader, epochs=1, callbacks=[_InterruptAtFirstBatch(interrupt)])
