import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module (``pytestmark = pytest.mark.usefixtures("single_thread")``):
    the images are tiny, so intra-op threads only add overhead (and stall when the machine is
    busy: a 1280-point bmm in torchvision's reference took 15 ms with 2 threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
