"""Impact previews of a draft, run in the background: what the golden set's grades and the judge's agreement
with the humans would become under the draft (:func:`flywheel.judge.policy_diff.policy_impact`, the function
behind `flywheel policy diff`), and what it would cost when the judge is a paid endpoint.

A preview is keyed by the content of both policies and the judge's configuration: asking again for the same
pair returns the same job (running or done), so closing the page loses nothing, and a workbench restarted in
the middle of one starts it again. It runs in the workbench process, or — when a Prefect deployment is named
(``--preview-deployment``, the stack's ``policy-preview``) — on the stack's workers, which write the result to
the shared directory the workbench reads.
"""

from __future__ import annotations

import json
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from flywheel.config import FlywheelConfig
from flywheel.data.lake import sha256_text
from flywheel.settings import Paths
from flywheel.workbench.store import now, write_atomic

OUTPUT_TOKENS = 60        # a reply: {"grade", "dimensions", "rationale": one sentence}
CHARS_PER_TOKEN = 4.0     # the usual rule of thumb for English with OpenAI tokenizers (an estimate, said so)


class CostNotConfirmed(RuntimeError):
    def __init__(self, estimate: dict):
        super().__init__(f"this preview calls a paid endpoint ({estimate['model']}) about {estimate['calls']:,} "
                         f"times, ≈ ${estimate['preview_usd']:.2f}: confirm to run it")
        self.estimate = estimate


def estimate_cost(cfg: FlywheelConfig, old_text: str, new_text: str, paths: Paths) -> dict | None:
    """What a preview of ``new_text`` against ``old_text``, and a day's labelling under ``new_text``, would cost
    with the configured judge; None when the judge costs nothing per call (the offline judge).

    Calls per policy follow :func:`flywheel.judge.calibrate._calibrate_openai`: the calibration split (its
    development fold once per exemplar set when exemplar sets are tried), the test split, the bias probes. Tokens
    are the prompt's characters / 4 plus a short reply; prices are the config's."""
    if cfg.judge.backend != "openai":
        return None
    from flywheel.data.golden import load_golden
    from flywheel.judge.policy import parse_policy
    from flywheel.judge.prompt import system_prompt, user_prompt

    golden = load_golden(cfg.resolve(cfg.golden))
    calib, test = golden.pairs("calibration"), golden.pairs("test")
    k = cfg.judge.exemplar_sets
    per_policy = (len(calib) * (3 / 8 * (k + 1) + 3 / 8) if k else len(calib)) \
        + (len(test) if cfg.judge.judge_test_split else 0) + 4 * min(cfg.judge.probe_pairs, len(calib))
    sample = calib.head(200)

    def per_call(text: str) -> float:
        policy = parse_policy(text)
        doc = sum(len(user_prompt(q, t, x, policy.document_fields))
                  for q, t, x in zip(sample["query"], sample.title, sample.text)) / max(len(sample), 1)
        tokens_in = (len(system_prompt(policy)) + doc) / CHARS_PER_TOKEN
        return (tokens_in * cfg.judge.price_in_per_mtok + OUTPUT_TOKENS * cfg.judge.price_out_per_mtok) / 1e6

    old_call, new_call = per_call(old_text), per_call(new_text)
    day_pairs = _day_volume(paths)
    return {"model": cfg.judge.openai_model, "calls": int(2 * per_policy),
            "preview_usd": round(per_policy * (old_call + new_call), 4),
            "per_call_usd": {"current": old_call, "draft": new_call},
            "day_pairs": day_pairs, "day_usd": None if day_pairs is None else round(day_pairs * new_call, 4),
            "day_usd_current": None if day_pairs is None else round(day_pairs * old_call, 4),
            "basis": f"prompt characters / {CHARS_PER_TOKEN:g} + {OUTPUT_TOKENS} reply tokens a call, at "
                     f"${cfg.judge.price_in_per_mtok:g} / ${cfg.judge.price_out_per_mtok:g} per million "
                     f"prompt / reply tokens; a day = the latest day's candidate pairs"}


def _day_volume(paths: Paths) -> int | None:
    from flywheel.data.lake import open_lake

    lk = open_lake(paths)
    dates = lk.dates("candidates")
    return int(len(lk.read("candidates", dates[-1]))) if dates else None


def preview_key(old_text: str, new_text: str, cfg: FlywheelConfig) -> str:
    return sha256_text(sha256_text(old_text), sha256_text(new_text), cfg.judge.model_dump_json(),
                       str(cfg.golden))[:16]


class Previews:
    """Background impact previews under ``<workbench dir>/previews/<key>/`` (old.md, new.md, status.json,
    result.json)."""

    def __init__(self, root: Path, config_path: str, cfg: FlywheelConfig, paths: Paths,
                 deployment: str | None = None):
        self.root, self.config_path, self.cfg, self.paths, self.deployment = root, config_path, cfg, paths, deployment
        self.root.mkdir(parents=True, exist_ok=True)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="preview")
        self._lock = threading.Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ jobs
    def start(self, old_text: str, new_text: str, actor: str, confirm_cost: bool = False) -> dict:
        """The preview of ``new_text`` against ``old_text``: an existing one (queued, running or done) or a new
        one. A paid judge's preview is refused with :class:`CostNotConfirmed` until ``confirm_cost``."""
        key = preview_key(old_text, new_text, self.cfg)
        with self._lock:
            status = self.status(key)
            if status and status["state"] in ("queued", "running", "done"):
                return status
            estimate = estimate_cost(self.cfg, old_text, new_text, self.paths)
            if estimate and estimate["preview_usd"] > 0 and not confirm_cost:
                raise CostNotConfirmed(estimate)
            d = self.root / key
            write_atomic(d / "old.md", old_text)
            write_atomic(d / "new.md", new_text)
            status = {"key": key, "state": "queued", "by": actor, "created_at": now(), "updated_at": now(),
                      "message": "waiting for a free slot", "step": 0, "steps": 2, "estimate": estimate,
                      "runner": "prefect" if self.deployment else "local"}
            self._write(key, status)
        if self.deployment:
            self._submit_deployment(key)
        else:
            self._pool.submit(self._run_local, key)
        return self.status(key)

    def resume_interrupted(self) -> list[str]:
        """Start again the local previews a previous workbench process left queued or running."""
        resumed = []
        for st in self.root.glob("*/status.json"):
            status = json.loads(st.read_text())
            if status.get("runner") == "local" and status["state"] in ("queued", "running"):
                self._write(status["key"], {**status, "state": "queued", "updated_at": now(),
                                            "message": "resumed after the workbench restarted"})
                self._pool.submit(self._run_local, status["key"])
                resumed.append(status["key"])
        return resumed

    def status(self, key: str) -> dict | None:
        p = self.root / key / "status.json"
        if not key.isalnum() or not p.exists():
            return None
        status = json.loads(p.read_text())
        if status.get("runner") == "prefect" and status["state"] in ("queued", "running"):
            status = self._refresh_from_prefect(status)
        return status

    def result(self, key: str) -> dict | None:
        p = self.root / key / "result.json"
        return json.loads(p.read_text()) if key.isalnum() and p.exists() else None

    def _write(self, key: str, status: dict) -> None:
        write_atomic(self.root / key / "status.json", json.dumps(status))

    def _update(self, key: str, **changes) -> None:
        self._write(key, {**json.loads((self.root / key / "status.json").read_text()), **changes,
                          "updated_at": now()})

    def _run_local(self, key: str) -> None:
        from flywheel.judge.policy_diff import policy_impact, save_impact

        d = self.root / key
        self._update(key, state="running", message="starting", started_at=now())
        last = [0.0]

        def progress(msg, step, steps):
            if time.monotonic() - last[0] >= 0.5 or msg.endswith("policy") or step == steps:   # at most 2 writes/s
                last[0] = time.monotonic()
                self._update(key, message=msg, step=step, steps=steps)

        try:
            r = policy_impact(d / "old.md", d / "new.md", self.cfg, self.paths, progress=progress)
            save_impact(r, d / "result.json")
            self._update(key, state="done", message=f"{len(r['changed_pairs'])} golden pair(s) change grade",
                         step=2, finished_at=now())
        except Exception as exc:   # shown on the page; the job can be started again
            self._update(key, state="failed", message=f"{type(exc).__name__}: {exc}",
                         trace=traceback.format_exc(limit=5))

    # ------------------------------------------------------------------ through the policy-preview deployment
    def _submit_deployment(self, key: str) -> None:
        from prefect.deployments import run_deployment

        d = self.root / key
        try:
            fr = run_deployment(self.deployment, timeout=0, parameters={
                "policy_file": str(d / "new.md"), "against": str(d / "old.md"), "config": self.config_path,
                "output": str(d / "result.json")})
            self._update(key, flow_run_id=str(fr.id), flow_run_name=fr.name,
                         message=f"submitted to the {self.deployment} deployment as flow run {fr.name}")
        except Exception as exc:
            self._update(key, state="failed", message=f"could not start the {self.deployment} deployment: {exc}")

    def _refresh_from_prefect(self, status: dict) -> dict:
        if not status.get("flow_run_id"):
            return status
        from prefect.client.orchestration import get_client

        try:
            with get_client(sync_client=True) as client:
                fr = client.read_flow_run(status["flow_run_id"])
        except Exception as exc:
            return {**status, "message": f"Prefect is not answering ({type(exc).__name__}); retrying"}
        kind = fr.state.type.value if fr.state else "PENDING"
        result = self.root / status["key"] / "result.json"
        if kind == "COMPLETED" and result.exists():
            r = json.loads(result.read_text())
            status.update(state="done", step=2, finished_at=now(),
                          message=f"{len(r['changed_pairs'])} golden pair(s) change grade")
        elif kind == "COMPLETED":
            status.update(state="failed", message=f"flow run {fr.name} completed but wrote no result to {result}: "
                                                  f"the worker must share FLYWHEEL_HOME with the workbench")
        elif kind in ("FAILED", "CRASHED", "CANCELLED", "CANCELLING"):
            status.update(state="failed", message=f"flow run {fr.name} is {fr.state.name}: {fr.state.message or ''}")
        else:
            status.update(state="running" if kind == "RUNNING" else "queued",
                          message=f"flow run {fr.name} is {fr.state.name if fr.state else 'scheduled'} on the "
                                  f"{self.deployment} deployment")
        self._write(status["key"], {**status, "updated_at": now()})
        return status
