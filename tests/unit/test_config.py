from pathlib import Path

import pytest

from flywheel.config import load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_points_at_real_files(path):
    cfg = load_config(path)
    assert cfg.resolve(cfg.policy).exists() and cfg.resolve(cfg.golden).exists()
    assert [r.name for r in cfg.ladder.rungs] == ["teacher", "mid", "student"]


def test_production_config_names_the_reference_ladder():
    rungs = load_config(ROOT / "configs" / "production.yaml").ladder.rungs
    assert [r.checkpoint for r in rungs] == ["Qwen/Qwen2.5-7B-Instruct", "Qwen/Qwen3-1.7B", "Qwen/Qwen3-0.6B"]


def test_config_errors_name_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("judge:\n  min_qwk: 3\nladder:\n  rungs: [{name: teacher}, {name: student}, {name: mid}]\n")
    with pytest.raises(ValueError) as exc:
        load_config(bad)
    assert "judge.min_qwk" in str(exc.value) and "teacher, mid, student" in str(exc.value)


def test_prefect_yaml_deployments_load():
    """Every deployment of prefect.yaml names a flow that imports, a work pool, and schedules Prefect accepts."""
    import importlib

    import yaml
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.flows import Flow

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert spec["deployments"], "prefect.yaml declares no deployment"
    for d in spec["deployments"]:
        file, _, name = d["entrypoint"].partition(":")
        assert (ROOT / file).exists(), d["entrypoint"]
        flow = getattr(importlib.import_module(file.removesuffix(".py").replace("/", ".")), name)
        assert isinstance(flow, Flow), f"{d['entrypoint']} is not a Prefect flow"
        assert d["work_pool"]["name"]
        for s in d.get("schedules", []):
            CronSchedule(cron=s["cron"], timezone=s.get("timezone", "UTC"))      # raises on a bad cron
        # the parameters must be ones the flow takes
        assert set(d.get("parameters") or {}) <= set(flow.parameters.properties), d["name"]


def test_a_config_extends_another_and_says_only_what_differs(tmp_path):
    from flywheel.config import load_config

    one = load_config("configs/production_1gpu.yaml")
    base = load_config("configs/production.yaml")
    assert one.judge == base.judge and one.fanout == base.fanout and one.ladder.batch_size == base.ladder.batch_size
    assert one.name == "production-1gpu" and [r.launch.world_size for r in one.ladder.rungs] == [1, 1, 1]
    assert one.ladder.rungs[0].lora is not None and one.ladder.checkpoint_every == base.ladder.checkpoint_every
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ValueError, match="circle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "c.yaml")


def test_prefect_yaml_declares_the_team_schedules_triggers_and_limits():
    """The labelling and retraining deployments run on their own schedules; retraining is also triggered by the
    event the labelling task emits (same name, a resource the trigger matches, a parameter the flow takes) and
    runs one at a time; the policy preview is on demand."""
    import fnmatch

    import yaml
    from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

    deps = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    assert {"daily-labelling", "retraining", "policy-preview", "daily"} <= set(deps)
    assert deps["daily-labelling"]["schedules"][0]["cron"] == "0 2 * * *"
    assert deps["retraining"]["schedules"][0]["cron"] == "0 4 * * 0"           # weekly by default
    assert "schedules" not in deps["policy-preview"]
    assert deps["retraining"]["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    (trigger,) = deps["retraining"]["triggers"]
    parsed = DeploymentEventTrigger(**{k: v for k, v in trigger.items() if k != "type"})
    source = (ROOT / "tasks" / "label.py").read_text()
    (event,) = parsed.expect
    assert f'event="{event}"' in source, "the trigger waits for an event the labelling task never emits"
    assert fnmatch.fnmatch("flywheel.labels.flywheel-ranker", trigger["match"]["prefect.resource.id"])
    assert set(trigger["parameters"]) <= {"config", "date", "keep_serving"}
