"""Liveness and readiness probes of instances, on a small thread pool so a hung instance
never stalls the supervisor's loop: each probe is a future the loop checks on its next tick.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from chattune.serving.control.instances import Slot
from chattune.serving.deployments import ProbeSettings


def probe(client: httpx.Client, url: str, timeout: float) -> bool:
    """One probe: GET `url` answered 2xx within `timeout` seconds."""
    try:
        return client.get(url, timeout=timeout).is_success
    except httpx.HTTPError:
        return False


class Prober:
    """Runs liveness and readiness probes of slots (on their engine's paths) on a thread pool."""

    def __init__(self, workers: int = 8) -> None:
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="probe")
        self.client = httpx.Client(trust_env=False)

    def tick(self, slot: Slot, liveness: ProbeSettings, readiness: ProbeSettings) -> bool:
        """Collect finished probes of `slot` and start the ones that are due.

        Returns:
            True when the slot's readiness changed or its liveness failed for good (the
            caller then restarts it: `slot.live_fail >= liveness.failure_threshold`).
        """
        changed = False
        now = time.monotonic()
        engine = slot.engine
        assert engine is not None, "probing a slot that was never started"
        if slot.live_probe is not None and slot.live_probe.done():
            ok = slot.live_probe.result()
            slot.live_probe = None
            slot.live_fail = 0 if ok else slot.live_fail + 1
            changed |= slot.live_fail >= liveness.failure_threshold
        if slot.ready_probe is not None and slot.ready_probe.done():
            ok = slot.ready_probe.result()
            slot.ready_probe = None
            if ok:
                slot.ready_ok, slot.ready_fail = slot.ready_ok + 1, 0
                if not slot.ready and slot.ready_ok >= readiness.success_threshold:
                    slot.ready = slot.ever_ready = changed = True
                    slot.start_crashes = 0
            else:
                slot.ready_ok, slot.ready_fail = 0, slot.ready_fail + 1
                if slot.ready and slot.ready_fail >= readiness.failure_threshold:
                    slot.ready, changed = False, True
        if slot.live_probe is None and now >= slot.next_live:
            slot.next_live = now + liveness.period
            slot.live_probe = self.pool.submit(
                probe, self.client, slot.url + engine.liveness_path, liveness.timeout
            )
        if slot.ready_probe is None and now >= slot.next_ready:
            # before the first success, probe readiness often: a loaded model joins at once
            period = readiness.period if slot.ever_ready else min(readiness.period, 0.25)
            slot.next_ready = now + period
            slot.ready_probe = self.pool.submit(
                probe, self.client, slot.url + engine.readiness_path, readiness.timeout
            )
        return changed

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
