import os
from pathlib import Path

import pytest
# One pytest process runs both StarDist (TensorFlow) and PyTorch tests. The CUDA torch stack
# crashes when imported after TensorFlow, but not before it: import it first. (The workflow
# itself never mixes them: StarDist and torch rules run in separate processes.)
import torch  # noqa: F401
import torchvision  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def shared_data(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test with the reason."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real test data not available: {path} (../shared/data is absent)")
    return path
