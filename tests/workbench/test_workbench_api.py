"""The policy workbench through its HTTP API: access, validation, publish / roll back / concurrency, bad input,
impact previews (in process, resumable, paid ones confirmed first), and what it reads back (calibration, labels)."""

from __future__ import annotations

import json
import threading
import time

import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.workbench.conftest import CONFIG, XHR, bearer, token_access

TITLES_ONLY = ("document_fields: [title, text]", "document_fields: [title]")


def _titles_only(text: str) -> str:
    """The shipped policy judged on titles only: its examples then show titles only too."""
    text = text.replace(*TITLES_ONLY)
    return "\n".join(l for l in text.splitlines() if not l.startswith("    text: "))


def _new_draft(c, who="pia", **kw):
    r = c.post("/api/drafts", json=kw, headers=bearer(who))
    assert r.status_code == 200, r.text
    return r.json()


def _wait(c, key, who="pia", timeout=600):
    t0 = time.time()
    while time.time() - t0 < timeout:
        s = c.get(f"/api/previews/{key}", headers=bearer(who)).json()
        if s["state"] in ("done", "failed"):
            return s
        time.sleep(0.5)
    raise AssertionError(f"preview {key} still {s['state']} after {timeout} s: {s['message']}")


def test_roles_decide_who_may_draft_and_publish(client_for):
    c = client_for(token_access())
    assert c.get("/api/policy").status_code == 401                                   # nobody
    assert c.get("/api/policy", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert c.get("/", follow_redirects=False).headers["location"] == "/login"
    assert c.get("/api/policy", headers=bearer("vera")).status_code == 200            # a viewer reads
    r = c.post("/api/drafts", json={}, headers=bearer("vera"))
    assert r.status_code == 403 and "viewer" in r.json()["detail"] and "editor" in r.json()["detail"]
    d = _new_draft(c, "eddie")                                                        # an editor drafts
    text = d["text"].replace("Loosely relevant", "Somewhat relevant")
    assert c.put(f"/api/drafts/{d['id']}", json={"text": text}, headers=bearer("eddie")).status_code == 200
    r = c.post(f"/api/drafts/{d['id']}/publish", json={"message": "m"}, headers=bearer("eddie"))
    assert r.status_code == 403 and "publisher" in r.json()["detail"]                 # ... but cannot publish
    # a browser's cookie is honoured only on requests from the workbench's own page (no cross-site form posts)
    assert c.post("/login", json={"token": "tok-pia-789"}).status_code == 200
    r = c.post(f"/api/drafts/{d['id']}/publish", json={"message": "wording"})
    assert r.status_code == 403 and "X-Requested-With" in r.json()["detail"]
    r = c.post(f"/api/drafts/{d['id']}/publish", json={"message": "wording"}, headers=XHR)
    assert r.status_code == 200 and r.json()["author"] == "pia"


def test_header_identity_and_loopback_only_without_an_access_file(client_for, tmp_path):
    from flywheel.workbench.access import Access, load_access
    from flywheel.workbench.app import serve_workbench

    c = client_for(Access.model_validate({"identity": "header", "users": [{"name": "pia", "role": "publisher"}]}))
    assert c.get("/api/policy").status_code == 401
    assert c.post("/api/drafts", json={}, headers={"X-Forwarded-User": "stranger"}).status_code == 403   # viewer
    assert c.post("/api/drafts", json={}, headers={"X-Forwarded-User": "pia", **XHR}).status_code == 200
    with pytest.raises(ValueError, match="--access"):
        serve_workbench(str(tmp_path / "none.yaml"), "0.0.0.0", 1, None, None)
    bad = tmp_path / "access.yaml"
    bad.write_text("identity: token\nusers:\n  - {name: a, role: admin}\n")
    with pytest.raises(ValueError, match="not a valid access file"):
        load_access(bad)


def test_validation_gives_exactly_the_messages_of_policy_check(client_for, wb_env, tmp_path):
    from flywheel.cli import app as cli

    c = client_for()
    _, _, policy = wb_env
    broken = policy.read_text().replace("label: Relevant", "label: ''").replace("owner:", "ownr:")
    f = tmp_path / "broken.md"
    f.write_text(broken)
    out = CliRunner().invoke(cli, ["policy", "check", str(f)])
    assert out.exit_code == 1
    cli_lines = [l.split(":", 1)[1] for l in out.output.strip().splitlines()]     # "<path>:<line>: <message>"
    r = c.post("/api/validate", json={"text": broken}, headers=XHR).json()
    assert not r["ok"] and [f"{p['line']}: {p['message']}" for p in r["problems"]] == cli_lines
    assert len(cli_lines) >= 3 and any("fix:" in l for l in cli_lines)
    ok = c.post("/api/validate", json={"text": policy.read_text()}, headers=XHR).json()
    assert ok["ok"] and ok["problems"] == [] and ok["version"] == "23841e38bf905b62"


def test_publish_is_atomic_recorded_and_rolled_back(client_for, wb_env):
    from flywheel.judge.policy import load_policy
    from flywheel.workbench.store import verify_audit

    c = client_for(token_access())
    _, paths, policy = wb_env
    original = policy.read_text()
    d = _new_draft(c)
    broken = d["text"].replace("grade: 3\n", "grade: 9\n", 1)
    assert c.put(f"/api/drafts/{d['id']}", json={"text": broken}, headers=bearer("pia")).json()["valid"] is False
    r = c.post(f"/api/drafts/{d['id']}/publish", json={"message": "oops"}, headers=bearer("pia"))
    assert r.status_code == 422 and r.json()["problems"] and policy.read_text() == original   # saved, not published
    edited = d["text"].replace("Loosely relevant", "Somewhat relevant")
    c.put(f"/api/drafts/{d['id']}", json={"text": edited}, headers=bearer("pia"))
    assert c.post(f"/api/drafts/{d['id']}/publish", json={"message": " "}, headers=bearer("pia")).status_code == 422
    rec = c.post(f"/api/drafts/{d['id']}/publish", json={"message": "softer grade 1"}, headers=bearer("pia")).json()
    assert policy.read_text() == edited and rec["version"] == load_policy(policy).version != rec["parent"]
    assert (paths.home / "policies" / f"open-data-search-{rec['version']}.md").read_text() == edited
    assert not list(policy.parent.glob(".*.tmp"))                     # no temporary file left beside it
    hist = c.get("/api/policy", headers=bearer("vera")).json()["history"]
    assert (hist[0]["version"], hist[0]["author"], hist[0]["message"], hist[0]["active"]) == \
        (rec["version"], "pia", "softer grade 1", True)
    r = c.post("/api/rollback", json={"to_version": rec["parent"], "base_version": rec["version"],
                                      "message": "back"}, headers=bearer("paul")).json()
    assert policy.read_text() == original and r["version"] == rec["parent"] and r["action"] == "rollback"
    log = [(e["actor"], e["action"]) for e in json.loads("[" + ",".join(
        (paths.home / "workbench" / "audit.jsonl").read_text().splitlines()) + "]")]
    assert ("pia", "publish") in log and ("paul", "rollback") in log
    audit = paths.home / "workbench" / "audit.jsonl"
    assert verify_audit(audit) == []
    lines = audit.read_text().splitlines()
    audit.write_text("\n".join(lines[:-1]) + "\n")                   # someone removes the last line
    assert verify_audit(audit) == [len(lines) - 1]
    audit.write_text("\n".join(lines[:1] + lines[2:]) + "\n")        # or one in the middle
    assert 2 in verify_audit(audit)


def test_a_second_publish_from_the_same_version_is_refused_with_a_diff(client_for, wb_env):
    c = client_for(token_access())
    _, _, policy = wb_env
    a, b = _new_draft(c, "pia"), _new_draft(c, "paul")
    a_text = a["text"].replace("Loosely relevant", "Somewhat relevant")
    b_text = b["text"].replace("Excellent", "Perfect")
    c.put(f"/api/drafts/{a['id']}", json={"text": a_text}, headers=bearer("pia"))
    c.put(f"/api/drafts/{b['id']}", json={"text": b_text}, headers=bearer("paul"))
    assert c.post(f"/api/drafts/{a['id']}/publish", json={"message": "a"}, headers=bearer("pia")).status_code == 200
    r = c.post(f"/api/drafts/{b['id']}/publish", json={"message": "b"}, headers=bearer("paul"))
    assert r.status_code == 409
    body = r.json()
    assert "by pia" in body["detail"] and "kept" in body["detail"]
    assert "-    label: Somewhat relevant" in body["diff"] and "+    label: Perfect" in body["diff"]
    assert policy.read_text() == a_text                                      # paul overwrote nothing
    assert c.get(f"/drafts/{b['id']}", headers=bearer("paul")).status_code == 200   # and lost nothing
    # many publishers at once from the same version: exactly one wins, each other one is told
    drafts = [_new_draft(c, "pia") for _ in range(6)]
    for i, d in enumerate(drafts):
        c.put(f"/api/drafts/{d['id']}", json={"text": d["text"] + f"\nEdit {i}.\n"}, headers=bearer("pia"))
    codes = []

    def publish(d):
        codes.append(c.post(f"/api/drafts/{d['id']}/publish", json={"message": "race"},
                            headers=bearer("pia")).status_code)

    threads = [threading.Thread(target=publish, args=(d,)) for d in drafts]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert sorted(codes) == [200] + [409] * 5


def test_bad_input_is_refused_clearly_and_loses_nothing(client_for, wb_env):
    c = client_for(token_access())
    _, _, policy = wb_env
    d = _new_draft(c)
    huge = d["text"] + "\n" + "x" * (10 * 1024 * 1024)
    r = c.put(f"/api/drafts/{d['id']}", json={"text": huge}, headers=bearer("pia"))
    assert r.status_code == 413 and "10.5 MB" in r.json()["detail"] and "still in the editor" in r.json()["detail"]
    assert c.post("/api/validate", json={"text": huge}, headers=bearer("pia")).status_code == 413
    assert c.get(f"/drafts/{d['id']}", headers=bearer("pia")).text.count("Open-data search grading policy") == 1
    # thousands of worked examples: validated, saved, published, and the page still opens
    ex = "".join(f"  - query: query {i}\n    title: Dataset {i}\n    text: About {i}.\n    grade: {i % 4}\n"
                 f"    why: Example {i} of many.\n" for i in range(3000))
    big = d["text"].replace("examples:\n", "examples:\n" + ex, 1)
    t0 = time.perf_counter()
    v = c.post("/api/validate", json={"text": big}, headers=bearer("pia")).json()
    assert v["ok"] and "3004 examples" in v["summary"]
    assert c.put(f"/api/drafts/{d['id']}", json={"text": big}, headers=bearer("pia")).status_code == 200
    assert c.post(f"/api/drafts/{d['id']}/publish", json={"message": "many"}, headers=bearer("pia")).status_code == 200
    page = c.get("/", headers=bearer("pia")).text
    assert "and 2954 more in the file" in page
    print(f"3000-example policy: validate + save + publish + page in {time.perf_counter() - t0:.2f} s")
    # HTML and script inside the policy are shown as text, never run
    xss = policy.read_text().replace("# Open-data search grading policy",
                                     "# Policy <script>alert('xss')</script>\n\n<img src=x onerror=alert(1)>")
    xss = xss.replace("query: crimes by neighborhood", "query: \"<b onmouseover=alert(2)>crimes</b>\"")
    d2 = _new_draft(c)
    c.put(f"/api/drafts/{d2['id']}", json={"text": xss}, headers=bearer("pia"))
    c.post(f"/api/drafts/{d2['id']}/publish", json={"message": "xss"}, headers=bearer("pia"))
    for url in ("/", f"/drafts/{_new_draft(c)['id']}"):
        r = c.get(url, headers=bearer("pia"))
        assert "<script>alert" not in r.text and "<img src=x" not in r.text and "<b onmouseover" not in r.text
        assert "&lt;script&gt;alert(" in r.text and "script-src 'self'" in r.headers["content-security-policy"]


def test_preview_runs_in_the_background_and_is_picked_up_again(stub_judge):
    from fastapi.testclient import TestClient

    from flywheel.judge.policy_diff import policy_impact
    from flywheel.workbench.app import create_app

    cfg, paths, policy, server = stub_judge
    make = lambda: TestClient(create_app(CONFIG, paths, token_access(), cfg=cfg)).__enter__()  # noqa: E731
    c = make()
    d = _new_draft(c, "eddie")
    c.put(f"/api/drafts/{d['id']}", json={"text": _titles_only(d["text"])}, headers=bearer("eddie"))
    r = c.post(f"/api/drafts/{d['id']}/preview", json={}, headers=bearer("eddie"))
    assert r.status_code == 402 and not server.calls                   # a paid judge: nothing runs unconfirmed
    s = c.post(f"/api/drafts/{d['id']}/preview", json={"confirm_cost": True}, headers=bearer("eddie")).json()
    assert s["state"] in ("queued", "running") and s["estimate"]["preview_usd"] > 0
    again = c.post(f"/api/drafts/{d['id']}/preview", json={}, headers=bearer("eddie")).json()
    assert again["key"] == s["key"]                                      # the same job, not a second one
    done = _wait(c, s["key"])
    assert done["state"] == "done", done
    r = done["result"]
    assert "document_fields: ['title', 'text'] -> ['title']" in r["changes"]
    # the judge sees titles only: fewer query words found, so grades only go down; each change says who rated what
    changed = r["changed_pairs"]
    assert changed and all(p["new"] < p["old"] and p["raters"] and p["new_rationale"] for p in changed)
    assert set(r["agreement"]) == {"old/calibration", "old/test", "new/calibration", "new/test"}
    assert r["calibration"]["new"]["policy_version"] == r["policy_versions"]["new"]
    # the same figures as `flywheel policy diff` computes for the same two files
    key_dir = paths.home / "workbench" / "previews" / s["key"]
    seen, calls_before = [], len(server.calls)
    ref = policy_impact(key_dir / "old.md", key_dir / "new.md", cfg, paths,
                        progress=lambda msg, step, steps: seen.append((step, msg)))
    done = {step: [int(m.rsplit(": ", 1)[1].split()[0].replace(",", "")) for st, m in seen if st == step and "done" in m]
            for step in (0, 1)}
    assert all(d == sorted(d) and d for d in done.values())                  # pairs judged, counted as they come
    assert done[0][-1] + done[1][-1] == len(server.calls) - calls_before     # one count a request
    figures = lambda a: {k: (m["qwk"], m["exact"], m["within_one"], m["n"], *m["qwk_ci95"]) for k, a in a.items()  # noqa: E731
                         for m in [a]}
    assert figures(ref["agreement"]) == figures(r["agreement"]) and len(ref["changed_pairs"]) == len(changed)
    # a workbench that stopped in the middle of a preview starts it again when it starts
    status = json.loads((key_dir / "status.json").read_text())
    (key_dir / "result.json").unlink()
    (key_dir / "status.json").write_text(json.dumps({**status, "state": "running", "message": "killed"}))
    c2 = make()
    assert _wait(c2, s["key"])["state"] == "done" and (key_dir / "result.json").exists()


def test_a_paid_preview_asks_first_with_its_estimate(client_for, wb_env, monkeypatch):
    from flywheel.judge.prompt import system_prompt
    from flywheel.workbench.previews import estimate_cost

    cfg, paths, policy = wb_env
    paid = cfg.model_copy(update={"judge": cfg.judge.model_copy(update={
        "backend": "openai", "openai_base_url": "http://127.0.0.1:9/v1", "exemplar_sets": 0,
        "price_in_per_mtok": 1.0, "price_out_per_mtok": 4.0})})
    from fastapi.testclient import TestClient

    from flywheel.workbench.app import create_app

    with TestClient(create_app("configs/stack_test.yaml", paths, token_access(), cfg=paid)) as c:
        d = _new_draft(c)
        longer = d["text"].replace("examples:\n", "examples:\n" + "".join(
            f"  - query: q{i}\n    title: T{i}\n    text: About {i}.\n    grade: 1\n    why: Example {i}.\n"
            for i in range(200)), 1)
        c.put(f"/api/drafts/{d['id']}", json={"text": longer}, headers=bearer("pia"))
        r = c.post(f"/api/drafts/{d['id']}/preview", json={}, headers=bearer("pia"))
        assert r.status_code == 402 and r.json()["confirm"]
        e = r.json()["estimate"]
        assert not list((paths.home / "workbench" / "previews").glob("*/status.json"))   # nothing started
    est = estimate_cost(paid, policy.read_text(), longer, paths)
    assert e["preview_usd"] == est["preview_usd"] > 0 and e["model"] == paid.judge.openai_model
    # the draft's 200 extra examples lengthen every prompt, so each call and a day cost more
    assert e["per_call_usd"]["draft"] > e["per_call_usd"]["current"]
    from flywheel.judge.policy import parse_policy

    grow = (len(system_prompt(parse_policy(longer))) - len(system_prompt(parse_policy(policy.read_text())))) / 4
    assert e["per_call_usd"]["draft"] - e["per_call_usd"]["current"] == pytest.approx(grow * 1.0 / 1e6, rel=1e-6)


def test_calibration_figures_disagreements_and_the_days_labels_are_read_back(wb_env, tmp_path):
    from fastapi.testclient import TestClient

    from flywheel.data.lake import Lake
    from flywheel.judge.calibrate import calibrate
    from flywheel.labeling.daily import record_usage
    from flywheel.serving.registry import log_calibration
    from flywheel.settings import Paths
    from flywheel.workbench.app import create_app

    cfg, _, policy = wb_env
    paths = Paths(home=tmp_path / "own", lake_dir=tmp_path / "own-lake")    # this test writes labels: its own lake
    c = TestClient(create_app("configs/stack_test.yaml", paths, token_access(), cfg=cfg)).__enter__()
    summary = calibrate(cfg, paths)
    log_calibration(summary, paths)
    page = c.get("/", headers=bearer("vera")).text
    assert f"{summary['test']['qwk']:.3f}" in page and f"{summary['calibration']['qwk']:.3f}" in page
    assert "passes" in page if summary["gate"]["passed"] else "BLOCKS" in page
    worst = max((g for g in summary["golden_grades"] if g["grade"] is not None),
                key=lambda g: abs(g["grade"] - g["human"]))
    dis = c.get("/disagreements", headers=bearer("vera")).text
    assert dis.index(worst["query"].replace("'", "&#39;").replace('"', "&#34;")) < dis.index("</table>")
    # labels of one day under the active version, one under an older one, and what the paid runs cost
    active = summary["policy_version"]
    lab = Lake(paths.lake)
    dates = lab.dates("judge_labels")
    day = "2031-05-07"
    assert day not in dates
    rows = pd.DataFrame({"date": day, "query_id": [f"q{i}" for i in range(7)], "doc_id": "d", "doc_hash": "h",
                         "grade": pd.array([0, 1, 1, 3, None, 2, 0], dtype="Int8"), "score": None,
                         "dimension_scores": None, "rationale": "r",
                         "parse_status": ["ok"] * 4 + ["unparsed"] + ["ok"] * 2, "raw_response": None,
                         "policy_hash": [active] * 6 + ["older"], "judge_backend": "openai", "judge_model": "m",
                         "prompt_hash": "p", "judge_version": "j1", "run_id": "r1",
                         "created_at": pd.Timestamp("2031-05-07", tz="UTC")})
    lab.write("judge_labels", rows, date=day, grades=range(4))
    record_usage(day, "j1", active, "r1", {"cost_usd": 0.25, "requests": 6}, paths)
    record_usage(day, "j1", active, "r2", {"cost_usd": 0.5, "requests": 6}, paths)
    record_usage(day, "j0", "older", "r0", {"cost_usd": 9.0}, paths)
    from flywheel.workbench.insights import day_labels

    got = day_labels(active, paths, day)
    assert (got["labels"], got["other_versions"], got["grades"], got["status"], got["cost_usd"]) == \
        (6, 1, {0: 1, 1: 2, 2: 1, 3: 1}, {"ok": 5, "unparsed": 1}, 0.75)
    page = c.get(f"/labels?date={day}", headers=bearer("vera")).text
    assert "$0.7500 over 2 paid labelling run(s)" in page and "unparsed" in page


def test_the_form_edits_the_header_and_keeps_the_guidance(client_for, wb_env):
    from flywheel.judge.policy import parse_policy

    c = client_for(token_access())
    _, _, policy = wb_env
    text = policy.read_text()
    form = c.post("/api/form/read", json={"text": text}, headers=bearer("vera")).json()
    assert [g["label"] for g in form["scale"]] == ["Irrelevant", "Loosely relevant", "Relevant", "Excellent"]
    assert form["document_fields"] == ["title", "text"] and len(form["examples"]) == 4
    form["scale"][1]["label"] = "Somewhat relevant"
    form["examples"].append({"query": "bike lanes", "title": "Bicycle Network", "text": "Every bike lane.",
                             "grade": 3, "why": "Exactly what was asked."})
    fields = {k: form[k] for k in ("scale", "dimensions", "examples")}
    assert c.post("/api/form/write", json={"text": text, "fields": fields}, headers=bearer("vera")).status_code == 403
    new = c.post("/api/form/write", json={"text": text, "fields": fields}, headers=bearer("eddie")).json()["text"]
    before, after = parse_policy(text), parse_policy(new)
    assert after.scale[1].label == "Somewhat relevant" and len(after.examples) == 5
    assert after.guidance == before.guidance and new.split("\n---\n", 1)[1] == text.split("\n---\n", 1)[1]
    assert (after.name, after.task, after.dimensions) == (before.name, before.task, before.dimensions)
    r = c.post("/api/form/read", json={"text": "no header"}, headers=bearer("vera"))
    assert r.status_code == 422 and "fix it in the text first" in r.json()["detail"]


def test_the_version_found_first_can_be_rolled_back_to_and_an_invalid_file_is_survived(client_for, wb_env):
    c = client_for(token_access())
    _, paths, policy = wb_env
    original = policy.read_text()
    d = _new_draft(c)
    c.put(f"/api/drafts/{d['id']}", json={"text": d["text"].replace("Excellent", "Perfect")}, headers=bearer("pia"))
    v2 = c.post(f"/api/drafts/{d['id']}/publish", json={"message": "m"}, headers=bearer("pia")).json()["version"]
    hist = c.get("/api/policy", headers=bearer("vera")).json()["history"]
    assert [(h["version"], h["action"]) for h in hist] == [(v2, "publish"), ("23841e38bf905b62", "found")]
    # someone breaks the file outside the workbench: every page still opens and says so
    policy.write_text(original.replace("owner:", "ownr:"))
    for url in ("/", "/labels", "/disagreements", "/audit", f"/versions/{v2}"):
        r = c.get(url, headers=bearer("vera"))
        assert r.status_code == 200, (url, r.text[-500:])
    assert "has problems" in c.get("/", headers=bearer("vera")).text
    current = c.get("/api/policy", headers=bearer("vera")).json()["version"]
    assert current.startswith("unparsed-")
    r = c.post("/api/rollback", json={"to_version": "23841e38bf905b62", "base_version": v2, "message": "fix"},
               headers=bearer("pia"))
    assert r.status_code == 409 and "ownr:" in r.json()["diff"]                 # guarded like any other
    r = c.post("/api/rollback", json={"to_version": "23841e38bf905b62", "base_version": current, "message": "fix"},
               headers=bearer("pia"))
    assert r.status_code == 200 and policy.read_text() == original
    # versions are looked up as versions, never as file patterns
    for bad in ("*", "**", "../x", "23841e38bf905b6*"):
        r = c.post("/api/rollback", json={"to_version": bad, "base_version": "x", "message": "m"},
                   headers=bearer("pia"))
        assert r.status_code == 404 and "not a policy version" in r.json()["detail"]
    assert c.post("/api/drafts", json={"from_version": "*"}, headers=bearer("pia")).status_code == 404


def test_a_draft_saved_elsewhere_is_not_overwritten(client_for):
    c = client_for(token_access())
    d = _new_draft(c, "eddie")
    first = c.put(f"/api/drafts/{d['id']}", json={"text": d["text"] + "\nA.\n", "loaded_at": d["updated_at"]},
                  headers=bearer("eddie"))
    assert first.status_code == 200
    stale = c.put(f"/api/drafts/{d['id']}", json={"text": d["text"] + "\nB.\n", "loaded_at": d["updated_at"]},
                  headers=bearer("pia"))                                    # another tab, opened before that save
    assert stale.status_code == 409 and "saved by eddie" in stale.json()["detail"]
    assert c.get(f"/drafts/{d['id']}", headers=bearer("pia")).text.count("\nA.\n") == 1
    c.delete(f"/api/drafts/{d['id']}", headers=bearer("eddie"))
    gone = c.put(f"/api/drafts/{d['id']}", json={"text": "x"}, headers=bearer("eddie"))
    assert gone.status_code == 404 and "discarded" in gone.json()["detail"]
    assert c.delete("/api/drafts/../../x", headers=bearer("eddie")).status_code in (404, 405)


def test_hostile_input_and_hosts(client_for, tmp_path, wb_env):
    from flywheel.workbench.access import load_access

    _, _, policy = wb_env
    bomb = policy.read_text().replace("owner: search-relevance-pm", "owner: search-relevance-pm\nx: &a [1, 1]\n"
                                      + "".join(f"x{i}: &a{i} [*a{i - 1 if i else ''}, *a{i - 1 if i else ''}]\n"
                                                for i in range(1, 9)).replace("*a0", "*a"))
    c = client_for()
    t0 = time.perf_counter()
    r = c.post("/api/validate", json={"text": bomb}, headers=XHR).json()
    assert time.perf_counter() - t0 < 5 and not r["ok"] and "aliases" in r["problems"][0]["message"]
    # without an access file the workbench answers to loopback names only (no DNS rebinding)
    assert c.get("/health", headers={"Host": "attacker.example"}).status_code == 400
    f = tmp_path / "access.yaml"
    f.write_text("identity: local\nusers: [{name: a, role: publisher}]\n")
    with pytest.raises(ValueError, match="identity: local"):
        load_access(f)
    f.write_text("identity: token\nusers: [{name: a, role: publisher, token_sha256: my-raw-secret-token}]\n")
    with pytest.raises(ValueError) as exc:
        load_access(f)
    assert "my-raw-secret-token" not in str(exc.value) and "token_sha256" in str(exc.value)
