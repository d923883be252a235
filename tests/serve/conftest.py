"""Fixtures of the serving tests."""

import pytest

from tests.serve.helpers import mlp_model, session_of


@pytest.fixture(scope="session")
def mlp_session():
    return session_of(mlp_model())
