"""The supervisor with real processes: the real gateway in front of fake model servers
(they start in a fraction of a second, so restarts and crash loops are quick to test)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from chattune.errors import DeploymentFailed
from chattune.serving import deployments as D
from chattune.serving import endpoints as E
from chattune.serving import service
from chattune.serving.control import lifecycle as control
from chattune.serving.control.instances import port_free
from chattune.workspace import Workspace
from tests.serving.control.supervised import FAST, fake_model, processes_under, serving_ws, wait_for

__all__ = ["fake_model", "serving_ws"]  # fixtures
pytestmark = pytest.mark.integration


def deploy(ws, endpoint: str, name: str, model: str, count: int = 1, **settings) -> D.Deployment:
    model_name, version = model.split(":")
    _, stamp = D.create_deployment(
        ws,
        endpoint,
        name,
        model_name=model_name,
        model_version=version,
        settings=D.validate_settings({**FAST, **settings}),
        instance_count=count,
    )
    assert control.apply(ws, endpoint, stamp)
    return control.wait_deployment(ws, endpoint, name, timeout_s=60)


def send_traffic(ws, endpoint: str, traffic: dict[str, int]) -> None:
    stamp = E.update_traffic(ws, endpoint, traffic)
    try:
        assert control.apply(ws, endpoint, stamp)
    except Exception:  # the supervisor's own account of why, in the test's report
        print(control.log_path(ws, endpoint).read_text()[-4000:])
        raise


def score(ep: E.Endpoint, key: str | None = None) -> httpx.Response:
    """POST the scoring URI with `key` (default: the endpoint's primary key)."""
    key = key or E.get_keys(Workspace.open(), ep.name).primary_key
    return httpx.post(
        ep.scoring_uri,
        json={"input_data": {"input_string": [{"role": "user", "content": "hi"}]}},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
        trust_env=False,
    )


def test_changes_are_live_on_return_and_delete_frees_everything(
    serving_ws, fake_model, tmp_path: Path
) -> None:
    ws = serving_ws
    ep = service.create_endpoint(ws, "live-ep")
    dep = deploy(ws, "live-ep", "blue", fake_model(load_s=0.3))
    assert dep.state == "ready" and [i.state for i in dep.instances] == ["ready"]
    assert score(ep).status_code == 404  # a new deployment gets no traffic
    send_traffic(ws, "live-ep", {"blue": 100})
    r = score(ep)
    assert r.status_code == 200 and r.json()["output"].startswith("blue on")

    old = E.get_keys(ws, "live-ep").primary_key
    assert control.apply(ws, "live-ep", E.regenerate_key(ws, "live-ep", "primary"))
    ep = E.get_endpoint(ws, "live-ep")
    assert score(ep, old).status_code == 401  # the very next request
    assert score(ep).status_code == 200
    assert score(ep, E.get_keys(ws, "live-ep").secondary_key).status_code == 200

    pids = processes_under(str(tmp_path))
    assert len(pids) == 2  # the supervisor (with its gateway) and one instance
    ports = [ep.port, dep.instances[0].port]
    control.delete_endpoint(ws, "live-ep")
    assert processes_under(str(tmp_path)) == []
    assert all(port_free(p) for p in ports)
    assert E.list_endpoints(ws) == [] and not E.endpoint_dir(ws, "live-ep").exists()


def test_killed_instance_fails_only_its_requests_and_comes_back(serving_ws, fake_model) -> None:
    ws = serving_ws
    ep = service.create_endpoint(ws, "kill-ep")
    model = fake_model(score_s=0.8)
    dep = deploy(ws, "kill-ep", "blue", model, count=2, max_concurrent_requests_per_instance=4)
    send_traffic(ws, "kill-ep", {"blue": 100})
    victim, survivor = dep.instances
    results: list[httpx.Response] = []

    def one() -> None:
        results.append(score(ep))

    logs = [E.endpoint_dir(ws, "kill-ep") / "blue" / f"instance-{i}.log" for i in (0, 1)]

    def arrived(log: Path) -> int:
        return log.read_text().count("scoring /score")

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    wait_for(lambda: sum(map(arrived, logs)) == 8, what="8 requests in flight")
    on_victim = arrived(logs[0])
    os.kill(victim.pid, signal.SIGKILL)  # each request takes 0.8 s: all 8 are in flight
    for t in threads:
        t.join()
    ok = [r for r in results if r.status_code == 200]
    failed = [r for r in results if r.status_code != 200]
    # exactly the requests in flight on the victim fail (424); least-busy routing spread them
    assert on_victim > 0 and len(failed) == on_victim and len(ok) == 8 - on_victim
    assert {r.json()["output"] for r in ok} == {f"blue on {survivor.port}"}
    assert {r.status_code for r in failed} == {424}
    assert all(score(ep).status_code == 200 for _ in range(4))  # the survivor serves

    def back() -> D.Instance | None:
        inst = D.get_deployment(ws, "kill-ep", "blue").instances[0]
        return inst if inst.state == "ready" and inst.pid != victim.pid else None

    inst = wait_for(back, what="the killed instance to be ready again")
    assert inst.restarts == 1 and "exited with code -9" in inst.error
    assert D.get_deployment(ws, "kill-ep", "blue").state == "ready"


def test_liveness_failure_restarts_a_hung_instance(serving_ws, fake_model) -> None:
    ws = serving_ws
    service.create_endpoint(ws, "hung-ep")
    dep = deploy(ws, "hung-ep", "blue", fake_model())
    hung = dep.instances[0]
    os.kill(hung.pid, signal.SIGSTOP)  # alive, but answers nothing
    t0 = time.monotonic()

    def restarted() -> D.Instance | None:
        inst = D.get_deployment(ws, "hung-ep", "blue").instances[0]
        return inst if inst.pid != hung.pid and inst.state == "ready" else None

    inst = wait_for(restarted, what="a restart after failed liveness probes")
    # 3 failures x 0.2 s period (each probe times out after 0.5 s)
    assert 0.5 < time.monotonic() - t0 < 10
    assert inst.restarts == 1 and "liveness probe failed 3 times" in inst.error
    assert wait_for(lambda: not Path(f"/proc/{hung.pid}").exists(), what="the hung pid gone")


def test_crash_at_start_ends_failed_with_the_logs_reason(serving_ws, fake_model) -> None:
    ws = serving_ws
    ep = service.create_endpoint(ws, "crash-ep")
    model = fake_model(crash="ValueError: config.json has no model_type")
    with pytest.raises(DeploymentFailed) as exc:
        deploy(ws, "crash-ep", "bad", model)
    assert "ValueError: config.json has no model_type" in exc.value.message
    assert "died 3 times before getting ready" in exc.value.message
    dep = D.get_deployment(ws, "crash-ep", "bad")
    assert dep.state == "failed" and [i.state for i in dep.instances] == ["failed"]
    assert dep.instances[0].restarts == 2  # 3 starts, then no more
    log = E.endpoint_dir(ws, "crash-ep") / "bad" / "instance-0.log"
    assert log.read_text().count("ValueError: config.json has no model_type") == 3
    # the gateway knows: a request sent to it gets 424 with the reason
    send_traffic(ws, "crash-ep", {"bad": 100})
    r = score(ep)
    assert r.status_code == 424 and "config.json has no model_type" in r.text


def test_liveness_failing_before_ready_ends_failed_not_in_a_loop(serving_ws, fake_model) -> None:
    ws = serving_ws
    service.create_endpoint(ws, "slow-ep")
    with pytest.raises(DeploymentFailed) as exc:
        deploy(ws, "slow-ep", "blue", fake_model(listen_s=30))
    assert "died 3 times before getting ready" in exc.value.message
    assert "raise --liveness-initial-delay" in exc.value.message
    dep = D.get_deployment(ws, "slow-ep", "blue")
    assert dep.instances[0].restarts == 2 and dep.instances[0].pid is None


def test_update_replaces_instances_and_scales(serving_ws, fake_model) -> None:
    ws = serving_ws
    service.create_endpoint(ws, "upd-ep")
    old = deploy(ws, "upd-ep", "blue", fake_model()).instances[0]
    settings = D.validate_settings({**FAST, "request_timeout_ms": 9000})
    stamp = D.update_deployment(ws, "upd-ep", "blue", instance_count=2, settings=settings)
    assert control.apply(ws, "upd-ep", stamp)
    dep = control.wait_deployment(ws, "upd-ep", "blue", timeout_s=60)
    assert dep.generation == 2 and dep.settings.request_timeout_ms == 9000
    assert [i.state for i in dep.instances] == ["ready", "ready"]
    assert old.pid not in {i.pid for i in dep.instances}  # replaced, not kept
    assert wait_for(lambda: not Path(f"/proc/{old.pid}").exists(), what="the old pid gone")


def test_up_restores_endpoints_after_every_process_died(
    serving_ws, fake_model, tmp_path: Path
) -> None:
    ws = serving_ws
    ep = service.create_endpoint(ws, "up-ep")
    keys = E.get_keys(ws, "up-ep")
    deploy(ws, "up-ep", "blue", fake_model(), count=2)
    send_traffic(ws, "up-ep", {"blue": 100})
    for pid in processes_under(str(tmp_path)):  # a machine restart: everything dies at once
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: processes_under(str(tmp_path)) == [], what="every process gone")
    with pytest.raises(httpx.HTTPError):
        score(ep)

    started = control.bring_up(ws)
    assert [e.name for e in started] == ["up-ep"]
    again = E.get_endpoint(ws, "up-ep")
    assert again.port == ep.port and E.get_keys(ws, "up-ep") == keys
    assert again.traffic == {"blue": 100} and again.state == "running"
    dep = D.get_deployment(ws, "up-ep", "blue")
    assert dep.state == "ready" and [i.state for i in dep.instances] == ["ready", "ready"]
    assert score(again).status_code == 200
    assert control.bring_up(ws) == []  # already running: nothing to do
