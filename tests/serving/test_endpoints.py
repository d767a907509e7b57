"""Endpoint and deployment records: Azure's name, traffic, mirror and settings rules."""

from __future__ import annotations

import pytest

from chattune.errors import DeploymentNotFound, EndpointError, EndpointNotFound
from chattune.serving import deployments as D
from chattune.serving import endpoints as E


@pytest.mark.parametrize("name", ["abc", "my-endpoint-1", "A" * 32, "x9z", "Ab-9"])
def test_valid_names(name: str) -> None:
    E.validate_name(name)


@pytest.mark.parametrize(
    "name", ["ab", "A" * 33, "1abc", "-abc", "abc-", "ab_c", "ab.c", "ab c", "ÿabc"]
)
def test_invalid_names_state_the_rule(name: str) -> None:
    with pytest.raises(EndpointError) as exc:
        E.validate_name(name)
    assert "3-32 characters" in exc.value.fix and "starting with a letter" in exc.value.fix


def test_parse_weights() -> None:
    assert E.parse_weights("blue=90, green=10") == {"blue": 90, "green": 10}
    assert E.parse_weights("") == {}
    for bad in ("blue", "blue=x", "blue=101", "blue=-1", "=5", "blue=1.5", "a=1,a=2"):
        with pytest.raises(EndpointError):
            E.parse_weights(bad)


@pytest.mark.parametrize(
    ("traffic", "mirror"),
    [({"blue": 100}, {}), ({}, {}), ({"blue": 0, "green": 0}, {}), ({"blue": 100}, {"green": 50})],
)
def test_traffic_accepted(traffic: dict, mirror: dict) -> None:
    E.validate_traffic(traffic, mirror, ["blue", "green", "red"])


@pytest.mark.parametrize(
    ("traffic", "mirror", "needle"),
    [
        ({"blue": 90}, {}, "sum to 90"),
        ({"blue": 60, "green": 60}, {}, "sum to 120"),
        ({"purple": 100}, {}, "'purple', not deployment"),
        ({"blue": 100}, {"purple": 10}, "--mirror-traffic names 'purple'"),
        ({"blue": 100}, {"green": 51}, "at most 50%"),
        ({"blue": 100}, {"green": 10, "red": 10}, "mirrors to one only"),
        ({"blue": 50, "green": 50}, {"green": 10}, "live and mirror traffic"),
    ],
)
def test_traffic_refused(traffic: dict, mirror: dict, needle: str) -> None:
    with pytest.raises(EndpointError) as exc:
        E.validate_traffic(traffic, mirror, ["blue", "green", "red"])
    assert needle in exc.value.message


def test_traffic_reports_every_problem_at_once() -> None:
    with pytest.raises(EndpointError) as exc:
        E.validate_traffic({"nope": 30}, {"blue": 60}, ["blue"])
    msg = exc.value.message
    assert "'nope'" in msg and "sum to 30" in msg and "at most 50%" in msg


def test_settings_defaults_are_azures() -> None:
    s = D.DeploymentSettings()
    assert (s.request_timeout_ms, s.max_concurrent_requests_per_instance) == (5000, 1)
    p = s.liveness_probe
    assert (p.initial_delay, p.period, p.timeout, p.success_threshold, p.failure_threshold) == (
        10,
        10,
        2,
        1,
        30,
    )
    assert s.readiness_probe == p


def test_settings_errors_name_the_flags() -> None:
    with pytest.raises(EndpointError) as exc:
        D.validate_settings(
            {"request_timeout_ms": 180_001, "liveness_probe": {"period": 0, "failure_threshold": 0}}
        )
    msg = exc.value.message
    assert "--request-timeout-ms" in msg
    assert "--liveness-period" in msg and "--liveness-failure-threshold" in msg


def _ep(ws, name: str = "ep-one") -> E.Endpoint:
    return E.create_endpoint(ws, name, port=12345, tags={"k": "v"})


def _dep(ws, name: str, endpoint: str = "ep-one") -> float:
    _, stamp = D.create_deployment(
        ws, endpoint, name, model_name="m", model_version="1", settings=D.DeploymentSettings()
    )
    return stamp


def test_create_endpoint_keys_and_uris(workspace) -> None:
    ep = _ep(workspace)
    keys = E.get_keys(workspace, "ep-one")
    assert keys.primary_key != keys.secondary_key and len(keys.primary_key) >= 40
    assert ep.scoring_uri == "http://127.0.0.1:12345/score"
    assert ep.openapi_uri == "http://127.0.0.1:12345/swagger.json"
    assert not any("key" in field for field in ep.to_dict())
    with pytest.raises(EndpointError, match="already exists"):
        _ep(workspace)
    for mode in ("aml_token", "aad_token"):
        with pytest.raises(EndpointError, match="not supported"):
            E.create_endpoint(workspace, "other", port=1, auth_mode=mode)
    with pytest.raises(EndpointNotFound) as exc:
        E.get_endpoint(workspace, "nope")
    assert "ep-one" in exc.value.fix


def test_every_change_bumps_the_stamp(workspace) -> None:
    ep = _ep(workspace)
    stamps = [ep.updated_at, _dep(workspace, "blue"), _dep(workspace, "green")]
    stamps.append(E.update_traffic(workspace, "ep-one", {"blue": 100}, {"green": 20}))
    old_key = E.get_keys(workspace, "ep-one").secondary_key
    stamps.append(E.regenerate_key(workspace, "ep-one", "secondary"))
    assert E.get_keys(workspace, "ep-one").secondary_key != old_key
    stamps.append(E.set_endpoint_fields(workspace, "ep-one", bump=False, state="running"))
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps) - 1


def test_update_traffic_checks_deployments(workspace) -> None:
    _ep(workspace)
    _dep(workspace, "blue")
    with pytest.raises(EndpointError, match="'green', not deployment"):
        E.update_traffic(workspace, "ep-one", {"blue": 50, "green": 50})
    E.update_traffic(workspace, "ep-one", {"blue": 100})
    assert E.get_endpoint(workspace, "ep-one").traffic == {"blue": 100}


def test_new_deployment_gets_no_traffic_and_delete_needs_zero(workspace) -> None:
    _ep(workspace)
    _dep(workspace, "blue")
    _dep(workspace, "green")
    assert E.get_endpoint(workspace, "ep-one").traffic == {}
    with pytest.raises(EndpointError, match="already has a deployment"):
        _dep(workspace, "blue")
    E.update_traffic(workspace, "ep-one", {"blue": 100}, {"green": 10})
    with pytest.raises(EndpointError) as exc:
        D.delete_deployment(workspace, "ep-one", "blue")
    assert "set its traffic to 0 first" in exc.value.fix
    D.delete_deployment(workspace, "ep-one", "green")  # drops its mirror share too
    assert E.get_endpoint(workspace, "ep-one").mirror_traffic == {}
    with pytest.raises(DeploymentNotFound) as exc2:
        D.get_deployment(workspace, "ep-one", "green")
    assert "blue" in exc2.value.fix


def test_update_deployment_bumps_generation(workspace) -> None:
    _ep(workspace)
    _dep(workspace, "blue")
    s = D.validate_settings({"request_timeout_ms": 9000})
    D.update_deployment(workspace, "ep-one", "blue", instance_count=3, settings=s)
    d = D.get_deployment(workspace, "ep-one", "blue")
    assert (d.instance_count, d.generation, d.settings.request_timeout_ms) == (3, 2, 9000)
    with pytest.raises(EndpointError, match="below 1"):
        D.update_deployment(workspace, "ep-one", "blue", instance_count=0)


def test_delete_endpoint_rows(workspace) -> None:
    _ep(workspace)
    _dep(workspace, "blue")
    D.replace_instances(
        workspace, "ep-one", [D.Instance("ep-one", "blue", 0, 1, 2, "ready", 0, None, 0.0)]
    )
    assert [i.state for i in D.get_deployment(workspace, "ep-one", "blue").instances] == ["ready"]
    E.delete_endpoint_rows(workspace, "ep-one")
    assert E.list_endpoints(workspace) == []
    assert workspace.db().execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 0


def test_plan_groups_fails_only_the_deployment_whose_model_is_gone(workspace, tmp_path) -> None:
    from chattune.models.card import builtin_cards
    from chattune.models.store import add_version
    from chattune.serving.control.supervisor import plan_groups

    card = builtin_cards()["SmolLM2-135M-Instruct"]
    add_version(workspace, name="m", kind="registered", card=card, path=tmp_path, source="t")
    _ep(workspace)
    _dep(workspace, "blue")  # model m:1, which exists
    D.create_deployment(
        workspace, "ep-one", "gone", model_name="nope", model_version="1",
        settings=D.DeploymentSettings(), instance_count=2,
    )  # fmt: skip
    groups = plan_groups(workspace, D.list_deployments(workspace, "ep-one"))
    assert groups["blue"].failed is None and groups["blue"].spec.model_dir == str(tmp_path)
    assert groups["blue"].count == 1 and groups["gone"].count == 0
    assert "no model named 'nope'" in groups["gone"].failed
