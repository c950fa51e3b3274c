"""Shared fixtures. Real data is read by path from ../shared/data (or $TISSUETALK_DATA);
tests that need it skip with a clear reason when it is absent."""
import os
import tempfile
import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", category=SyntaxWarning)  # squidpy's docrep on import

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Tests never write into the user's ~/.tissuetalk or ~/.cache/tissuetalk.
_TMP = tempfile.mkdtemp(prefix="tissuetalk-tests-")
os.environ["TISSUETALK_HOME"] = os.path.join(_TMP, "home")
os.environ["TISSUETALK_CACHE"] = os.path.join(_TMP, "cache")

REPO = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path | None:
    env = os.environ.get("TISSUETALK_DATA")
    root = Path(env) if env else REPO.parent / "shared" / "data"
    return root if root.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_root()
    if root is None:
        pytest.skip("reference data folder ../shared/data (or $TISSUETALK_DATA) is absent")
    return root


def _shared_file(shared_data: Path, rel: str) -> Path:
    p = shared_data / rel
    if not p.exists():
        pytest.skip(f"reference file {rel} is absent from the data folder")
    return p


@pytest.fixture(scope="session")
def dlpfc_hvg300(shared_data) -> Path:
    return _shared_file(shared_data, "spatial/fixture_dlpfc_151673_hvg300.h5ad")


@pytest.fixture(scope="session")
def dlpfc_full(shared_data) -> Path:
    return _shared_file(shared_data, "spatial/dlpfc_151673.h5ad")


@pytest.fixture(scope="session")
def merfish(shared_data) -> Path:
    return _shared_file(shared_data, "spatial/merfish_hypothalamus_moffitt2018.h5ad")


@pytest.fixture(scope="session")
def osmfish(shared_data) -> Path:
    return _shared_file(shared_data, "spatial/osmfish_sscortex_codeluppi2018.h5ad")


@pytest.fixture(scope="session")
def knowledge(shared_data) -> Path:
    return _shared_file(shared_data, "knowledge")


@pytest.fixture(scope="module")
def small_h5ad(tmp_path_factory):
    """A small simulated tissue (.h5ad) the agent tests load."""
    from tools.simulate import simulate_tissue

    path = tmp_path_factory.mktemp("input") / "tissue.h5ad"
    simulate_tissue(seed=0, n_rows=10, n_cols=12).write_h5ad(path)
    return path


@pytest.fixture
def test_tools():
    """Registers the agent tests' toy tools for one test."""
    from test_agent_toolkit import register_test_tools, unregister

    register_test_tools()
    yield
    unregister()
