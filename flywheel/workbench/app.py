"""The workbench's web application: server-rendered pages (Jinja2, escaped by default) and a small JSON API that
the page's plain JavaScript calls. Every action goes through :mod:`flywheel.workbench.store` (drafts, publish,
roll back, audit), :mod:`flywheel.workbench.previews` (impact previews: ``policy_impact``) and
:mod:`flywheel.workbench.insights` (calibration, disagreements, labels) — the functions the CLI uses.

Run it with ``flywheel workbench``; ``create_app`` builds it for tests.
"""

from __future__ import annotations

import ipaddress
import os
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Body, Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from markdown_it import MarkdownIt

from flywheel.config import FlywheelConfig, load_config
from flywheel.judge.policy import PolicyError
from flywheel.settings import Paths, configure_environment
from flywheel.workbench import insights
from flywheel.workbench.access import Access, User, load_access
from flywheel.workbench.previews import CostNotConfirmed, Previews, preview_key
from flywheel.workbench.store import (Conflict, DraftChanged, NotPublishable, TooLarge, Workbench, diff_text,
                                      form_fields, validate, with_form_fields)

HERE = Path(__file__).parent
_md = MarkdownIt("commonmark", {"html": False})   # raw HTML in a policy is shown as text, never run
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; object-src 'none'; "
       "base-uri 'none'; frame-ancestors 'none'; form-action 'self'")


def create_app(config_path: str, paths: Paths, access: Access, preview_deployment: str | None = None,
               cfg: FlywheelConfig | None = None) -> FastAPI:
    cfg = cfg or load_config(config_path)
    wb = Workbench(cfg.resolve(cfg.policy), paths)
    previews = Previews(wb.dir / "previews", config_path, cfg, paths, preview_deployment)

    @asynccontextmanager
    async def lifespan(app):
        from flywheel.data.golden import seed_golden
        from flywheel.data.lake import open_lake

        seed_golden(cfg.resolve(cfg.golden), open_lake(paths))   # previews judge the golden set from the lake
        previews.resume_interrupted()
        yield
        previews.close()

    app = FastAPI(title="Policy workbench", lifespan=lifespan, docs_url="/api/docs", redoc_url=None)
    app.state.wb, app.state.previews, app.state.access, app.state.cfg = wb, previews, access, cfg
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    if access.identity == "local":
        # one person on loopback: refuse other Host names, so a web page cannot reach it by DNS rebinding
        from starlette.middleware.trustedhost import TrustedHostMiddleware

        app.add_middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1", "localhost"])
    templates = Jinja2Templates(directory=HERE / "templates")
    templates.env.filters["markdown"] = lambda text: _md.render(text or "")
    templates.env.globals["pct"] = lambda x: "–" if x is None else f"{x:.0%}"
    templates.env.globals["num"] = lambda x, d=3: "–" if x is None or x != x else f"{x:.{d}f}"

    @app.middleware("http")
    async def security_headers(request: Request, call_next):
        response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        return response

    # ------------------------------------------------------------------ identity
    def current_user(request: Request) -> User | None:
        return access.identify(request.headers, request.cookies)

    def need(role: str):
        def dep(request: Request) -> User:
            user = current_user(request)
            if user is None:
                raise HTTPException(401, "sign in first: send your token (Authorization: Bearer …) or open /login")
            if not user.can(role):
                raise HTTPException(403, f"{user.name} is a {user.role}; this needs the {role} role — ask whoever "
                                         f"keeps the workbench's access file")
            if request.method != "GET":
                # only a request from the workbench's own page may change anything: a cross-site form post carries
                # the browser's cookie (or the proxy's header) but can set neither this header nor same-origin
                bearer = access.identity == "token" and request.headers.get("authorization", "").lower() \
                    .startswith("bearer ")
                if not bearer and request.headers.get("x-requested-with") != "workbench":
                    raise HTTPException(403, "missing X-Requested-With: workbench")
                if request.headers.get("sec-fetch-site") == "cross-site":
                    raise HTTPException(403, "a request from another site")
            return user
        return dep

    def signed_in(request: Request) -> User:
        """Pages: checked before any work is done; someone not signed in is sent to /login."""
        user = current_user(request)
        if user is None:
            raise HTTPException(303, "sign in", headers={"Location": "/login"})
        return user

    def page(request: Request, name: str, **ctx):
        return templates.TemplateResponse(request, name, {"user": current_user(request),
                                                          "policy_file": wb.policy_path.name, **ctx})

    def figures_by_version() -> dict[str, dict]:
        try:
            logged = insights.calibrations(paths)
        except Exception as exc:   # MLflow down: the page still opens, and says so
            logged = {"__error__": {"error": f"MLflow at {paths.mlflow_uri} did not answer: {exc}"}}
        return {**insights.previewed(previews.root), **logged}

    # ------------------------------------------------------------------ pages
    @app.get("/health")
    def health():
        return {"status": "ok", "policy": wb.policy_path.name}

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request):
        return templates.TemplateResponse(request, "login.html", {"user": None, "error": None,
                                                                  "identity": access.identity})

    @app.post("/login")
    def login(request: Request, token: str = Body(..., embed=True)):
        user = access.by_token(token) if access.identity == "token" else None
        if user is None:
            return JSONResponse({"detail": "unknown token: check it, or ask for one"}, status_code=401)
        resp = JSONResponse({"name": user.name, "role": user.role})
        resp.set_cookie("workbench_token", token, httponly=True, samesite="strict", max_age=8 * 3600)
        return resp

    @app.get("/", response_class=HTMLResponse)
    def overview(request: Request, _: User = Depends(signed_in)):
        try:
            policy, problem = wb.active(), None
        except PolicyError as exc:
            policy, problem = None, exc.problems
        figures = figures_by_version()
        active = wb.file_version()
        summary = figures.get(active, {}).get("summary")
        return page(request, "overview.html", policy=policy, problems=problem, history=wb.history(),
                    figures=figures, drafts=wb.drafts(), summary=summary, active_version=active,
                    labels=insights.day_labels(active, paths) if policy else None,
                    disagreements=insights.disagreements(summary or {}, 8), judge=cfg.judge)

    @app.get("/versions/{version}", response_class=HTMLResponse)
    def version_page(request: Request, version: str, _: User = Depends(signed_in)):
        try:
            text = wb.version_text(version)
        except KeyError as exc:
            raise HTTPException(404, str(exc)) from None
        policy, _ = validate(text, version)
        active_text = wb.active_text()
        summary = figures_by_version().get(version, {}).get("summary")
        return page(request, "version.html", version=version, policy=policy, summary=summary,
                    active_version=wb.file_version(active_text),
                    diff=diff_text(active_text, text, "active", f"version {version}"),
                    disagreements=insights.disagreements(summary or {}, 25))

    @app.get("/drafts/{draft_id}", response_class=HTMLResponse)
    def draft_page(request: Request, draft_id: str, _: User = Depends(signed_in)):
        try:
            draft = wb.draft(draft_id)
        except KeyError as exc:
            raise HTTPException(404, str(exc)) from None
        # the preview of exactly this text against the active policy, if one was asked for (from any browser)
        key = preview_key(wb.active_text(), draft.text, cfg)
        return page(request, "draft.html", draft=draft, active_version=wb.file_version(), judge=cfg.judge,
                    preview=key if previews.status(key) else "")

    @app.get("/labels", response_class=HTMLResponse)
    def labels_page(request: Request, date: str | None = None, _: User = Depends(signed_in)):
        active = wb.file_version()
        return page(request, "labels.html", version=active, labels=insights.day_labels(active, paths, date),
                    paid=cfg.judge.backend == "openai")

    @app.get("/disagreements", response_class=HTMLResponse)
    def disagreements_page(request: Request, _: User = Depends(signed_in)):
        active = wb.file_version()
        summary = figures_by_version().get(active, {}).get("summary")
        return page(request, "disagreements.html", version=active, summary=summary,
                    rows=insights.disagreements(summary or {}, 100))

    @app.get("/audit", response_class=HTMLResponse)
    def audit_page(request: Request, _: User = Depends(signed_in)):
        return page(request, "audit.html", entries=list(reversed(wb.audit_log()))[:500])

    # ------------------------------------------------------------------ API
    @app.post("/api/validate")
    def api_validate(text: str = Body(..., embed=True), user: User = Depends(need("viewer"))):
        try:
            from flywheel.workbench.store import check_size
            check_size(text)
        except TooLarge as exc:
            return JSONResponse({"ok": False, "too_large": True, "problems": [{"line": 1, "message": str(exc)}]},
                                status_code=413)
        policy, problems = validate(text, wb.policy_path.name)
        return {"ok": policy is not None, "problems": [{"line": ln, "message": m} for ln, m in problems],
                "version": policy.version if policy else None,
                "summary": (f"{len(policy.scale)} grades, {len(policy.dimensions)} dimensions, "
                            f"{len(policy.examples)} examples") if policy else None}

    @app.post("/api/form/read")
    def api_form_read(text: str = Body(..., embed=True), user: User = Depends(need("viewer"))):
        try:
            return form_fields(text)
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None

    @app.post("/api/form/write")
    def api_form_write(text: str = Body(...), fields: dict = Body(...), user: User = Depends(need("editor"))):
        try:
            return {"text": with_form_fields(text, fields)}
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None

    @app.post("/api/drafts")
    def api_new_draft(body: dict = Body(default={}), user: User = Depends(need("editor"))):
        base = body.get("from_version")
        try:
            d = wb.new_draft(user.name, wb.version_text(base) if base else None)
        except KeyError as exc:
            raise HTTPException(404, str(exc)) from None
        wb.audit(user.name, "new-draft", draft=d.id, base_version=d.base_version, from_version=base)
        return d.to_json()

    @app.put("/api/drafts/{draft_id}")
    def api_save_draft(draft_id: str, text: str = Body(...), loaded_at: str | None = Body(None),
                       user: User = Depends(need("editor"))):
        try:
            d = wb.save_draft(draft_id, text, user.name, loaded_at)
        except TooLarge as exc:
            raise HTTPException(413, str(exc)) from None
        except DraftChanged as exc:
            raise HTTPException(409, str(exc)) from None
        except KeyError as exc:
            raise HTTPException(404, str(exc)) from None
        policy, problems = validate(text, wb.policy_path.name)
        return {"id": d.id, "updated_at": d.updated_at, "valid": policy is not None, "problems": len(problems)}

    @app.delete("/api/drafts/{draft_id}")
    def api_discard(draft_id: str, user: User = Depends(need("editor"))):
        try:
            wb.discard_draft(draft_id, user.name)
        except KeyError as exc:
            raise HTTPException(404, str(exc)) from None
        return {"discarded": draft_id}

    @app.post("/api/drafts/{draft_id}/preview")
    def api_preview(draft_id: str, body: dict = Body(default={}), user: User = Depends(need("editor"))):
        try:
            d = wb.draft(draft_id)
        except KeyError as exc:
            raise HTTPException(404, str(exc)) from None
        policy, problems = validate(d.text, wb.policy_path.name)
        if policy is None:
            raise HTTPException(422, {"message": f"the draft has {len(problems)} problem(s): fix them to preview it",
                                      "problems": [{"line": ln, "message": m} for ln, m in problems]})
        try:
            status = previews.start(wb.active_text(), d.text, user.name, bool(body.get("confirm_cost")))
        except CostNotConfirmed as exc:
            return JSONResponse({"detail": str(exc), "estimate": exc.estimate, "confirm": True}, status_code=402)
        wb.audit(user.name, "preview", draft=draft_id, preview=status["key"], version=policy.version,
                 estimated_usd=(status.get("estimate") or {}).get("preview_usd"))
        return status

    @app.get("/api/previews/{key}")
    def api_preview_status(key: str, user: User = Depends(need("viewer"))):
        status = previews.status(key)
        if status is None:
            raise HTTPException(404, f"no preview {key!r}")
        status.pop("trace", None)   # stays in the preview's status file for whoever runs the workbench
        return {**status, "result": previews.result(key) if status["state"] == "done" else None}

    def publishing(change):
        """Run a publish or a rollback; each refusal becomes its HTTP answer (nothing was written)."""
        try:
            return change()
        except KeyError as exc:
            raise HTTPException(404, str(exc)) from None
        except TooLarge as exc:
            raise HTTPException(413, str(exc)) from None
        except Conflict as exc:
            return JSONResponse({"detail": str(exc), "current_version": exc.current_version, "diff": exc.diff},
                                status_code=409)
        except NotPublishable as exc:
            return JSONResponse({"detail": str(exc), "problems": [{"line": ln, "message": m}
                                                                  for ln, m in exc.problems]}, status_code=422)

    @app.post("/api/drafts/{draft_id}/publish")
    def api_publish(draft_id: str, message: str = Body(..., embed=True), user: User = Depends(need("publisher"))):
        def change():
            d = wb.draft(draft_id)
            rec = wb.publish(d.text, d.base_version, user.name, message)
            wb.discard_draft(draft_id, user.name)
            return rec
        return publishing(change)

    @app.post("/api/rollback")
    def api_rollback(to_version: str = Body(...), base_version: str = Body(...), message: str = Body(""),
                     user: User = Depends(need("publisher"))):
        return publishing(lambda: wb.rollback(to_version, base_version, user.name, message))

    @app.get("/api/policy")
    def api_policy(user: User = Depends(need("viewer"))):
        return {"name": wb.active_name(), "version": wb.file_version(), "file": str(wb.policy_path),
                "history": wb.history()}

    return app


def serve_workbench(config: str, host: str, port: int, access_file, preview_deployment: str | None) -> None:
    import uvicorn

    if access_file is None and not _loopback(host):
        raise ValueError(f"--host {host} would let anyone on the network publish policies: give --access FILE "
                         f"(users and roles), or listen on 127.0.0.1")
    paths = configure_environment()
    # a page must open when MLflow is down: fail fast instead of minutes of retries
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    app = create_app(config, paths, load_access(access_file), preview_deployment)
    print(f"policy workbench on http://{host}:{port}/ — policy {app.state.wb.policy_path}, "
          f"previews {'via deployment ' + preview_deployment if preview_deployment else 'in this process'}")
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
