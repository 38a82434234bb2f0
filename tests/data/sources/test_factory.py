import itertools
import textwrap

import numpy as np
import pytest

from fedlight.data import build_federated_data, load_source
from fedlight.data.sources import SourceOptions
from fedlight.errors import ConfigError, DataError

_COUNTER = itertools.count()

MODULE = '''
import torch
from torch.utils.data import Dataset, TensorDataset

seen = {}


class Squares(Dataset):
    """A map-style dataset yielding (x, 0-d tensor)."""
    classes = ["zero", "one", "two"]

    def __init__(self, n, offset):
        self.n, self.offset = n, offset

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return torch.full((2, 3), float(i + self.offset)), torch.tensor(i % 3)


def make_parties(seed):
    seen["seed"] = seed
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(6, 2, 3, generator=gen)
    return {
        "clinic-a": (Squares(5, 0), Squares(2, 100)),
        "clinic-b": (TensorDataset(x, torch.tensor([0, 1, 2, 0, 1, 2])), None),
    }


def make_list():
    return [(Squares(4, 0), None), (Squares(3, 10), None)]


def make_empty(**kwargs):
    return {"ok": (Squares(2, 0), None), "hollow": (Squares(0, 0), None)}


def make_wrong():
    return 42


def make_bad_label():
    return [([(torch.zeros(2), "cat")], None)]


not_callable = 3
'''


@pytest.fixture
def module(tmp_path, monkeypatch):
    name = f"fl_user_data_{next(_COUNTER)}"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def _load(spec, seed=0, **kw):
    return load_source("python", None, seed=seed, options=SourceOptions(data_factory=spec, **kw))


def test_dict_of_parties_is_materialised(module):
    import importlib

    src = _load(f"{module}:make_parties", seed=5)
    assert importlib.import_module(module).seen == {"seed": 5}
    assert src.writer_ids == ("clinic-a", "clinic-b")
    assert src.input_shape == (2, 3) and src.train_x.dtype == np.float32
    assert src.class_names == ("zero", "one", "two")  # from the first dataset's .classes
    assert src.train_y[:5].tolist() == [0, 1, 2, 0, 1]
    assert src.train_x[:5, 0, 0].tolist() == [0, 1, 2, 3, 4]
    # clinic-a brings its own test set; clinic-b none, so it has no test rows
    assert src.test_x[:, 0, 0].tolist() == [100, 101] and src.test_writer.tolist() == [0, 0]
    data = build_federated_data(src, partition="natural", val_fraction=0.0)
    assert [c.num_train for c in data.clients] == [5, 6]
    assert data.test_client.tolist() == [0, 0]
    other = _load(f"{module}.make_parties", seed=6)  # the dotted form works too
    assert not np.array_equal(other.train_x[5:], src.train_x[5:])


def test_list_of_parties_without_test_sets_is_split(module):
    src = _load(f"{module}:make_list", test_fraction=0.34)
    assert src.writer_ids == ("party-0", "party-1")
    assert np.bincount(src.train_writer).tolist() == [2, 1] and np.bincount(src.test_writer).tolist() == [2, 2]
    assert src.class_names == ("zero", "one", "two")


@pytest.mark.parametrize(
    "attr, error, message",
    [
        ("make_empty", DataError, "party 'hollow' has no training rows"),
        ("make_wrong", DataError, "returned int"),
        ("make_bad_label", DataError, "'cat'"),
        ("not_callable", ConfigError, "not a callable"),
        ("missing_function", ConfigError, "has no attribute 'missing_function'"),
    ],
)
def test_factory_errors_name_the_path(module, attr, error, message):
    spec = f"{module}:{attr}"
    with pytest.raises(error) as info:
        _load(spec)
    assert spec in str(info.value) and message in str(info.value) and "\n" not in str(info.value)


def test_unimportable_module_and_missing_option():
    with pytest.raises(ConfigError, match="cannot import 'no_such_pkg_xyz.data'"):
        _load("no_such_pkg_xyz.data:make")
    with pytest.raises(ConfigError, match="needs --data-factory"):
        load_source("python", None)
    with pytest.raises(ConfigError, match="expected module:callable"):
        _load("justaname")
