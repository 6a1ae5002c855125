"""Chaos fixtures: a Cluster (a queuectl home with real supervisord) on SQLite or on
a fresh PostgreSQL schema; soak tests run only when asked for (`pytest -m soak`)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.chaos.harness import Cluster, cluster, pg_available


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Soak runs take minutes: skip them unless the -m expression names `soak`."""
    if "soak" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="soak test: run with `pytest -m soak`")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


def _need_pg() -> None:
    reason = pg_available()
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI=true: PostgreSQL tests must run)")
        pytest.skip(reason)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        _need_pg()
    return str(request.param)


@pytest.fixture
def chaos(backend: str) -> Iterator[Cluster]:
    """A Cluster on a fresh database of the parametrized backend."""
    with cluster(backend) as c:
        yield c


@pytest.fixture
def sqlite_chaos() -> Iterator[Cluster]:
    with cluster("sqlite") as c:
        yield c


@pytest.fixture
def pg_chaos() -> Iterator[Cluster]:
    _need_pg()
    with cluster("postgres") as c:
        yield c
