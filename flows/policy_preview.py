"""The policy-preview deployment (on demand): how a policy edit would change the judge's grades on the golden set
— which golden labels change, agreement before and after, the gate under each — as Prefect artifacts.
Run: ``python -m flows.policy_preview NEW_POLICY [--against OLD_POLICY] [--config FILE]``."""

from __future__ import annotations

from flywheel.settings import configure_environment

configure_environment()   # before prefect/mlflow read their settings

from prefect import flow  # noqa: E402

from flywheel.config import load_config  # noqa: E402
from flywheel.judge.policy_diff import save_impact  # noqa: E402
from tasks import policy  # noqa: E402
from tasks._common import file_hash  # noqa: E402


@flow(name="policy-preview")
def policy_preview(policy_file: str, against: str | None = None, config: str = "configs/demo.yaml",
                   output: str | None = None) -> dict:
    """``policy_file``: the edited policy; ``against``: the policy it would replace (default: the config's);
    ``output``: also write the result there as JSON (the workbench reads it from its shared volume)."""
    cfg = load_config(config)
    old, new = cfg.resolve(against or cfg.policy), cfg.resolve(policy_file)
    for p in (old, new):
        if not p.exists():
            raise FileNotFoundError(f"no policy file at {p}: give a path relative to the repository or absolute")
    golden = cfg.resolve(cfg.golden)
    policy.seed_golden(str(golden), "".join(file_hash(p) for p in sorted(golden.glob("*.parquet"))))
    r = policy.preview_policy(str(old), str(new), file_hash(old), file_hash(new), cfg)
    if output:
        save_impact(r, output)
    return r


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("policy_file")
    ap.add_argument("--against", default=None)
    ap.add_argument("--config", default="configs/demo.yaml")
    a = ap.parse_args()
    r = policy_preview(a.policy_file, a.against, a.config)
    print(f"{len(r['changed_pairs'])} golden pair(s) change grade; agreement {r['agreement']}")
