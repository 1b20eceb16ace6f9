import pytest

from maskface.data import synthetic


@pytest.fixture(scope="session")
def widerface_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("widerface")
    written = synthetic.write_widerface(root, num_images=6, image_size=(192, 160), face_size=(32, 80),
                                        seed=3, empty_images=1, landmark_drop_prob=0.4)
    return root, written


@pytest.fixture(scope="session")
def aflw_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("aflw")
    written = synthetic.write_aflw(root, num_images=4, image_size=(192, 192), faces_per_image=(1, 2),
                                   face_size=(48, 90), seed=4)
    return root, written


@pytest.fixture(scope="session")
def w300_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("300w")
    written = synthetic.write_300w(root, num_images=4, image_size=(192, 192), face_size=(60, 120), seed=5)
    return root, written
