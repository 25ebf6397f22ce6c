"""Fixtures for the fault suite: the two fault servers, serving every case's route."""

from __future__ import annotations

import pytest
from conftest import free_port

from .cases import ROUTES, FaultServers
from .server import FaultServer


@pytest.fixture(scope="session")
def fault_servers():
    main, strict = FaultServer(ROUTES), FaultServer(ROUTES)
    yield FaultServers(main=main, strict=strict, refused=f"http://127.0.0.1:{free_port()}")
    main.close()
    strict.close()
