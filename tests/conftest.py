import gc

import pytest

from tests.fdcheck import assertNoNewDescriptors, openDescriptors


@pytest.fixture
def noLeaks():
    """
    The test must leave the process with exactly the descriptors it had.
    """
    before = openDescriptors()
    yield
    gc.collect()
    assertNoNewDescriptors(before)
