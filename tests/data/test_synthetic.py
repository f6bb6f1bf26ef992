import numpy as np
import pytest

from tfunet.data.synthetic import SyntheticSource, generate


@pytest.fixture(scope="module")
def data():
    return generate(num_patients=10, slices_per_patient=12, image_size=64, seed=3)


def test_shapes_dtypes_and_ids(data):
    assert data["image"].shape == (120, 64, 64, 3) and data["image"].dtype == np.uint8
    assert data["mask"].shape == (120, 64, 64, 1) and data["mask"].dtype == np.uint8
    assert set(np.unique(data["mask"])) <= {0, 1}
    assert data["patient_id"][0] == "synth_000" and data["patient_id"][-1] == "synth_009"
    assert data["slice"][:12].tolist() == list(range(1, 13))


def test_deterministic_by_seed(data):
    again = generate(num_patients=10, slices_per_patient=12, image_size=64, seed=3)
    other = generate(num_patients=10, slices_per_patient=12, image_size=64, seed=4)
    np.testing.assert_array_equal(data["image"], again["image"])
    np.testing.assert_array_equal(data["mask"], again["mask"])
    assert not np.array_equal(data["image"], other["image"])


def test_most_slices_are_tumour_free_like_real_data():
    big = generate(num_patients=30, slices_per_patient=20, image_size=32, seed=0)
    has_tumour = big["mask"].reshape(len(big["mask"]), -1).any(axis=1)
    assert 0.45 <= 1 - has_tumour.mean() <= 0.75


def test_tumour_grows_then_shrinks_within_a_patient(data):
    for p in range(10):
        areas = data["mask"][p * 12:(p + 1) * 12].reshape(12, -1).sum(axis=1)
        present = np.flatnonzero(areas)
        if len(present) < 3:
            continue
        # consecutive run of tumour slices, the largest cross-section away from both ends
        assert np.all(np.diff(present) == 1)
        peak = present[np.argmax(areas[present])]
        assert areas[present[0]] <= areas[peak] >= areas[present[-1]]


def test_tumour_is_bright_in_flair(data):
    mask = data["mask"][..., 0].astype(bool)
    flair = data["image"][..., 1].astype(float)
    brain = data["image"].max(axis=-1) > 30
    assert flair[mask].mean() > flair[brain & ~mask].mean() + 20


def test_source_filters_by_patient():
    source = SyntheticSource(num_patients=4, slices_per_patient=3, image_size=32, seed=0)
    assert source.patients() == {f"synth_{i:03d}": 3 for i in range(4)}
    elements = list(source.dataset(["synth_001", "synth_003"]).as_numpy_iterator())
    assert [e["patient_id"].decode() for e in elements] == ["synth_001"] * 3 + ["synth_003"] * 3
    assert elements[0]["image"].shape == (32, 32, 3) and elements[0]["slice"] == 1
