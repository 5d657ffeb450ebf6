"""The shipped result folders test their models on the MNIST test set bundled with nas.

A result folder copied elsewhere is given its test images by NAS_TEST_DATA (see its test_model.py).
"""

import os
from pathlib import Path

import pytest

BUNDLED_MNIST = Path(__file__).resolve().parent.parent / "nas" / "datasets" / "mnist"


@pytest.fixture(scope="session", autouse=True)
def bundled_test_data():
    previous = os.environ.get("NAS_TEST_DATA")
    os.environ.setdefault("NAS_TEST_DATA", str(BUNDLED_MNIST))
    yield
    if previous is None:
        os.environ.pop("NAS_TEST_DATA", None)
