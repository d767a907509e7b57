"""Fixtures of the gateway tests: the fake model servers and the gateways served in a
thread (`harness`), all stopped at the end."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator

import pytest

from chattune.serving.gateway.app import create_gateway
from chattune.serving.gateway.config import GatewayConfig
from tests.serving.gateway.harness import Fake, Served, start_fakes


@pytest.fixture(scope="module")
def fakes() -> Iterator[dict[str, Fake]]:
    """blue, green and shadow: alive for the whole module, reset before each test."""
    started = start_fakes("blue", "green", "shadow")
    try:
        yield started
    finally:
        for fake in started.values():
            fake.stop()


@pytest.fixture
def fresh(fakes: dict[str, Fake]) -> dict[str, Fake]:
    for fake in fakes.values():
        fake.control()
    return fakes


@pytest.fixture
def doomed() -> Iterator[Fake]:
    """A fake for this test only: it is told to die."""
    fake = start_fakes("doomed")["doomed"]
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def serve() -> Iterator[Callable[..., Served]]:
    """serve(config, seed=0) starts a gateway; every one is stopped at the end."""
    started: list[Served] = []

    def start(config: GatewayConfig, seed: int = 0) -> Served:
        served = Served(create_gateway(config, rng=random.Random(seed)))
        started.append(served)
        return served

    try:
        yield start
    finally:
        for served in started:
            served.stop()
