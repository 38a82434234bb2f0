import numpy as np

from fedlight.data.corruption import add_image_noise, choose_noisy_clients, corrupt_labels


def test_shift_mode_maps_c_to_c_plus_one(rng):
    labels = np.array([0, 1, 61])
    assert corrupt_labels(labels, 1.0, "shift", 62, rng).tolist() == [1, 2, 0]


def test_random_mode_always_changes_the_label(rng):
    labels = np.zeros(1000, dtype=np.int64)
    noisy = corrupt_labels(labels, 1.0, "random", 5, rng)
    assert (noisy != 0).all() and set(noisy) == {1, 2, 3, 4}


def test_probability_is_respected(rng):
    labels = np.zeros(10000, dtype=np.int64)
    noisy = corrupt_labels(labels, 0.3, "shift", 10, rng)
    assert abs((noisy != 0).mean() - 0.3) < 0.02
    assert labels.sum() == 0  # input untouched


def test_choose_noisy_clients_and_image_noise(rng):
    chosen = choose_noisy_clients(10, 0.3, rng)
    assert len(chosen) == 3 and len(set(chosen)) == 3
    images = np.full((4, 1, 2, 2), 0.5, dtype=np.float32)
    noisy = add_image_noise(images, 0.1, rng)
    assert noisy.dtype == np.float32 and 0 <= noisy.min() and noisy.max() <= 1
    assert not np.allclose(noisy, images)
