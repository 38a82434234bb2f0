import numpy as np
import torch

from fedlight.data import build_federated_data
from fedlight.data.sources import SourceData


def _table_source(n_parties=4, per_party=12, features=5):
    rng = np.random.default_rng(0)
    n = n_parties * per_party
    # Test rows: two per party, then three of a pooled test set that belongs to no party.
    test_writer = np.concatenate([np.repeat(np.arange(n_parties), 2), [-1, -1, -1]])
    return SourceData(
        name="tab", train_x=rng.normal(size=(n, features)).astype(np.float32), train_y=np.arange(n) % 2,
        test_x=rng.normal(size=(len(test_writer), features)).astype(np.float32), test_y=np.arange(len(test_writer)) % 2,
        class_names=("a", "b"), train_writer=np.repeat(np.arange(n_parties), per_party), test_writer=test_writer,
        writer_ids=tuple(f"h{i}" for i in range(n_parties)), feature_names=tuple(f"f{i}" for i in range(features)),
        preprocessing={"scaling": "party"},
    )


def test_test_client_maps_each_test_row_to_its_partys_client():
    src = _table_source()
    data = build_federated_data(src, partition="natural", seed=0)
    assert data.input_shape == (5,) and data.clients[0].train_x.shape[1:] == (5,)
    assert data.test_client.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, -1, -1, -1]
    assert data.preprocessing == {"scaling": "party"} and data.feature_names == src.feature_names


def test_a_subset_of_parties_keeps_its_own_and_the_pooled_test_rows():
    src = _table_source()
    data = build_federated_data(src, partition="natural", num_clients=2, seed=1)
    kept = [int(name[1:]) for name in (c.name for c in data.clients)]
    expected_rows = [i for i, w in enumerate(src.test_writer) if w in kept or w < 0]
    assert torch.equal(data.test_x, torch.from_numpy(src.test_x[expected_rows]))
    by_client = {cid: kept[cid] for cid in range(2)}
    for row, cid in zip(expected_rows, data.test_client.tolist()):
        assert (cid == -1 and src.test_writer[row] == -1) or by_client[cid] == src.test_writer[row]


def test_other_partitions_have_no_test_client_and_table_noise_is_not_clipped():
    src = _table_source()
    data = build_federated_data(src, partition="iid", num_clients=3, seed=0)
    assert data.test_client is None and len(data.test_y) == len(src.test_y)
    noisy = build_federated_data(src, partition="natural", noisy_client_fraction=1.0, image_noise_std=0.5, seed=0)
    values = torch.cat([c.train_x for c in noisy.clients])
    assert values.min() < -1.0 and values.max() > 1.5  # z-scored features, no [0, 1] clipping
