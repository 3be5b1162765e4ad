"""The TUI tests' fixtures: the model and SAE of support/tui_support.py, and an app on them."""
from __future__ import annotations

import pytest

from tui_support import build_model_dir, build_sae_dir, make_test_app, with_dashboards


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_model_dir(tmp_path_factory.mktemp("tui-model"))


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory):
    return build_sae_dir(tmp_path_factory.mktemp("tui-sae") / "sae")


@pytest.fixture
def app(model_dir, sae_dir):
    return make_test_app(model_dir, sae_dir)


@pytest.fixture
def dash_sae_dir(tmp_path, sae_dir):
    return with_dashboards(sae_dir, tmp_path / "sae")


@pytest.fixture
def dash_app(model_dir, dash_sae_dir):
    """The app on the test SAE with synthetic dashboards in its folder."""
    return make_test_app(model_dir, dash_sae_dir)
