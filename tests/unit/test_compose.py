"""docker-compose.yml, its images and .env.example, checked without a Docker engine.

There is no Docker engine on the machines that run these tests, so the stack is validated statically: the Compose
Specification's JSON Schema first, then what a schema cannot see (references between services, volumes, variables,
ports, secrets, healthchecks, GPUs), then every command against the real CLIs installed in this venv (`--help`
of prefect, mlflow and dask; the argument parser of `flywheel serve`). Each check is a plain function returning a
list of problems that name the service or variable, so the last tests can feed them a deliberately broken copy.
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT.parent / "shared" / "schemas" / "compose-spec.json"
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
INIT_SCRIPT = ROOT / "docker" / "postgres" / "init-databases.sh"
BIN = Path(sys.executable).parent

# --- reading the files ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _load_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def load_compose() -> dict:
    """A private copy (anchors and `<<` merges resolved, as Compose resolves them): tests may break it."""
    return copy.deepcopy(_load_compose())


def read_env_file(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """KEY=value lines of a .env file; comments and blank lines skipped."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=value: {line!r}"
            env[key.strip()] = value.strip().strip("'\"")
    return env


def walk_strings(node, path: str = ""):
    """(path, string) for every string value under node (Compose interpolates values, not keys)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk_strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk_strings(value, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def env_mapping(env) -> dict[str, str | None]:
    """A service's `environment` (or `build.args`) as a dict, whichever of its two syntaxes it uses."""
    if isinstance(env, dict):
        return {k: None if v is None else str(v) for k, v in env.items()}
    out = {}
    for item in env or []:
        key, sep, value = item.partition("=")
        out[key] = value if sep else None
    return out


# --- interpolation: ${VAR}, ${VAR:-x}, ${VAR-x}, ${VAR:?err}, ${VAR?err}, ${VAR:+x}, $VAR; $$ is a literal $ ----------

VAR = re.compile(r"\$(?:\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}|(?P<bare>[A-Za-z_]\w*))")


def _chunks(text: str) -> list[str]:
    """The text split at each `$$` escape, so no chunk holds an escaped dollar."""
    return text.split("$$")


def referenced_vars(text: str) -> set[str]:
    return {m["name"] or m["bare"] for chunk in _chunks(text) for m in VAR.finditer(chunk)}


def malformed_refs(text: str) -> list[str]:
    """`${...}` forms Compose would reject (e.g. `${VAR:x}`): what is left after removing the valid ones."""
    return [c for chunk in _chunks(text) if "${" in (c := VAR.sub("", chunk))]


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's substitution of text with env (as `docker compose config` would print it)."""
    def one(m: re.Match) -> str:
        name, op, arg = m["name"] or m["bare"], m["op"], m["arg"] or ""
        value, is_set = env.get(name, ""), name in env
        if op == ":-":
            return value or arg
        if op == "-":
            return value if is_set else arg
        if op in (":?", "?") and not (value if op == ":?" else is_set):
            raise ValueError(f"${{{name}}}: {arg}")
        if op == ":+":
            return arg if value else ""
        if op == "+":
            return arg if is_set else ""
        return value
    return "$".join(VAR.sub(one, chunk) for chunk in _chunks(text))


# --- commands --------------------------------------------------------------------------------------------------------

SHELL_SEPARATORS = {"&&", "||", ";", "|", "&"}
REDIRECTIONS = {">", ">>", "<", ">&", "&>", "<&"}


def split_shell_script(script: str) -> list[list[str]]:
    """The simple commands of a `sh -c` script: split at && || ; |, redirections dropped."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    tokens, commands, current = list(lexer), [], []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in SHELL_SEPARATORS:
            commands.append(current)
            current = []
        elif tok in REDIRECTIONS:
            i += 1                                           # and its target
        elif not (tok.isdigit() and i + 1 < len(tokens) and tokens[i + 1] in REDIRECTIONS):
            current.append(tok)
        i += 1
    return [c for c in commands + [current] if c]


def service_commands(svc: dict, env: dict[str, str]) -> list[list[str]]:
    """argv of every program a service runs (entrypoint + command, `sh -c` scripts split), interpolated."""
    def as_list(v):
        return shlex.split(v) if isinstance(v, str) else list(v or [])
    argv = [interpolate(a, env) for a in as_list(svc.get("entrypoint")) + as_list(svc.get("command"))]
    if len(argv) >= 3 and Path(argv[0]).name in ("sh", "bash") and argv[1] == "-c":
        return split_shell_script(" ".join(argv[2:]))
    return [argv] if argv else []


def flag_value(argv: list[str], *names: str) -> str | None:
    for i, tok in enumerate(argv):
        if tok in names and i + 1 < len(argv):
            return argv[i + 1]
        for n in names:
            if tok.startswith(n + "="):
                return tok.split("=", 1)[1]
    return None


# --- the checks a schema cannot make -------------------------------------------------------------------------------


def schema_errors(compose: dict, schema: dict) -> list[str]:
    from jsonschema import Draft7Validator

    errors = sorted(Draft7Validator(schema).iter_errors(compose), key=lambda e: list(map(str, e.absolute_path)))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def is_one_shot(svc: dict) -> bool:
    """`restart: "no"` marks a job that runs to completion (YAML 1.1 reads a bare `no` as False)."""
    return svc.get("restart") in ("no", False)


def has_healthcheck(svc: dict) -> bool:
    hc = svc.get("healthcheck") or {}
    return bool(hc.get("test")) and not hc.get("disable") and hc.get("test") != ["NONE"]


def check_depends_on(compose: dict) -> list[str]:
    """Every dependency exists and says what it waits for; the service waited on can satisfy the condition; and a
    service is never made to wait for one that its profiles may leave disabled (a required dependency that is
    not enabled stops `docker compose up`)."""
    services, problems = compose["services"], []
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            problems.append(f"{name}: depends_on is a list; use {{service: {{condition: ...}}}}")
            deps = {d: {} for d in deps}
        for dep, spec in deps.items():
            if dep not in services:
                problems.append(f"{name}: depends_on names undefined service {dep!r}")
                continue
            condition = (spec or {}).get("condition")
            target = services[dep]
            if not condition:
                problems.append(f"{name}: depends_on {dep!r} has no condition")
            elif condition == "service_healthy" and not has_healthcheck(target):
                problems.append(f"{name}: waits for {dep!r} to be healthy but {dep!r} has no healthcheck")
            elif condition == "service_completed_successfully" and not is_one_shot(target):
                problems.append(f"{name}: waits for {dep!r} to complete, but {dep!r} is not a one-shot "
                                f"(restart: \"no\")")
            mine, theirs = set(svc.get("profiles") or []), set(target.get("profiles") or [])
            always_with_me = not theirs or (mine and mine <= theirs)
            if not always_with_me and (spec or {}).get("required", True):
                problems.append(f"{name}: depends on {dep!r} (profiles {sorted(theirs)}), which can be disabled "
                                f"while {name} runs (profiles {sorted(mine) or 'none'}); add required: false")
    return problems


def named_volumes_used(svc: dict) -> list[str]:
    names = []
    for vol in svc.get("volumes") or []:
        if isinstance(vol, dict):
            if vol.get("type", "volume") == "volume" and vol.get("source"):
                names.append(vol["source"])
        elif ":" in vol:
            source = vol.split(":", 1)[0]
            if not source.startswith(("/", ".", "~", "$")):
                names.append(source)
    return names


def check_volumes(compose: dict) -> list[str]:
    """A named volume must be declared at the top level, or Compose refuses the file."""
    declared = set(compose.get("volumes") or {})
    return [f"{name}: volume {vol!r} is not declared under top-level volumes:"
            for name, svc in compose["services"].items() for vol in named_volumes_used(svc) if vol not in declared]


def check_variables(compose: dict, documented: dict[str, str]) -> list[str]:
    """Every ${VAR} is in .env.example (defaults or not: the file is the operator's list of knobs), and every
    variable there is used; a malformed ${...} is reported too."""
    used: dict[str, str] = {}
    problems = []
    for path, text in walk_strings(compose):
        for var in referenced_vars(text):
            used.setdefault(var, path)
        problems += [f"{path}: malformed interpolation in {text!r}" for _ in malformed_refs(text)]
    problems += [f"${{{v}}} (at {used[v]}) is not documented in .env.example"
                 for v in sorted(set(used) - set(documented))]
    problems += [f".env.example defines {v}, which docker-compose.yml never uses"
                 for v in sorted(set(documented) - set(used))]
    return problems


def host_ports(svc: dict, env: dict[str, str]) -> list[str]:
    """Published host ports as "port/proto" (container-only ports publish nothing fixed)."""
    out = []
    for p in svc.get("ports") or []:
        if isinstance(p, dict):
            if p.get("published"):
                out.append(f"{interpolate(str(p['published']), env)}/{p.get('protocol', 'tcp')}")
            continue
        spec, _, proto = interpolate(str(p), env).partition("/")
        parts = spec.rsplit(":", 2)
        if len(parts) >= 2:
            out.append(f"{parts[-2]}/{proto or 'tcp'}")
    return out


def check_ports(compose: dict, env: dict[str, str]) -> list[str]:
    """Host ports are unique across ALL services: profiles are not exclusive (`--profile cpu --profile gpu` is legal),
    so two services that publish one port would fail to start together."""
    owners: dict[str, str] = {}
    problems = []
    for name, svc in compose["services"].items():
        for port in host_ports(svc, env):
            if port in owners:
                problems.append(f"{name}: host port {port} is already published by {owners[port]}")
            owners.setdefault(port, name)
    return problems


def check_healthchecks(compose: dict) -> list[str]:
    """A long-running service must say when it is ready: `depends_on: service_healthy` and `docker compose ps`
    rely on it. One-shot jobs (restart: "no") are waited on with service_completed_successfully instead."""
    return [f"{name}: long-running service without a healthcheck" for name, svc in compose["services"].items()
            if not is_one_shot(svc) and not has_healthcheck(svc)]


SECRET_WORDS = ("PASSWORD", "SECRET", "TOKEN")
# a secret may only be passed through: ${VAR}, ${VAR:-} (empty default) or ${VAR:?error}
PASS_THROUGH = re.compile(r"\$\{[A-Za-z_]\w*(?::?-)?\}|\$\{[A-Za-z_]\w*:?\?[^}]*\}")
URL_CREDENTIALS = re.compile(r"://([^:/@\s]*):([^@\s]*)@")


def is_secret_name(name: str) -> bool:
    upper = name.upper()
    return any(w in upper for w in SECRET_WORDS) or "KEY" in upper.split("_")


def check_no_literal_secrets(compose: dict) -> list[str]:
    """No password, key, token or secret is written in the compose file: each comes from .env. Defaults count as
    literals (`${PASSWORD:-hunter2}`), and so does a password inside a URL."""
    problems = []
    for name, svc in compose["services"].items():
        for where in ("environment", "build.args"):
            mapping = svc.get("environment") if where == "environment" else (svc.get("build") or {}).get("args")
            for key, value in env_mapping(mapping).items():
                if is_secret_name(key) and value is not None and not PASS_THROUGH.fullmatch(value):
                    problems.append(f"{name}: {where} {key} is a literal, not a ${{VAR}} from .env")
    for path, text in walk_strings(compose):
        masked = "$".join(VAR.sub("REF", chunk) for chunk in _chunks(text))
        for m in URL_CREDENTIALS.finditer(masked):
            if m[2] != "REF":
                problems.append(f"{path}: a URL carries a literal password")
    return problems


def check_gpu_reservations(compose: dict) -> list[str]:
    """Services of profile gpu reserve an NVIDIA GPU; without it the container starts with no device at all."""
    problems = []
    for name, svc in compose["services"].items():
        if "gpu" not in (svc.get("profiles") or []):
            continue
        devices = (((svc.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
        if not any(d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or []) for d in devices):
            problems.append(f"{name}: profile gpu but no deploy.resources.reservations.devices nvidia/gpu")
    return problems


def check_dockerfile(text: str, name: str) -> list[str]:
    """An image installs the lock (the versions CI tested), runs as a non-root USER, and copies nothing secret."""
    lines = re.sub(r"\\\n", " ", text).splitlines()
    instructions = [(ln.split(None, 1) + [""])[:2] for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    instructions = [(op.upper(), args.strip()) for op, args in instructions]
    problems = []
    if not any(op == "RUN" and re.search(r"pip install .*-r requirements\.lock", args) for op, args in instructions):
        problems.append(f"{name}: never runs `pip install -r requirements.lock`")
    users = [args.split(":")[0] for op, args in instructions if op == "USER"]
    if not users or users[-1] in ("root", "0"):
        problems.append(f"{name}: the final USER is {users[-1] if users else 'root (none set)'}")
    for op, args in instructions:
        if op in ("COPY", "ADD"):
            sources = [a for a in shlex.split(args) if not a.startswith("--")][:-1]
            for src in sources:
                base = Path(src).name
                if (base.startswith(".env") and base != ".env.example") or \
                        any(fnmatch.fnmatch(base, p) for p in ("*.pem", "*.key", "id_rsa*", "credentials*")):
                    problems.append(f"{name}: {op} {src} copies a secret into the image")
        if op in ("ENV", "ARG"):
            pairs = [t.split("=", 1) for t in shlex.split(args) if "=" in t]
            problems += [f"{name}: {op} {k} bakes a secret into the image" for k, v in pairs if is_secret_name(k) and v]
    return problems


def project_services(compose: dict) -> dict[str, dict]:
    """Services run from an image this repository builds."""
    return {n: s for n, s in compose["services"].items() if s.get("build")}


def check_worker_pools(compose: dict, env: dict[str, str], pools: set[str]) -> list[str]:
    """The worker polls, and the deploy job creates, the work pool prefect.yaml deploys to; a mismatch leaves every
    scheduled run waiting forever."""
    problems, polled = [], set()
    for name, svc in compose["services"].items():
        for argv in service_commands(svc, env):
            if argv[:3] == ["prefect", "worker", "start"]:
                pool = flag_value(argv, "--pool", "-p")
                polled.add(pool)
                if pool not in pools:
                    problems.append(f"{name}: polls work pool {pool!r}; prefect.yaml deploys to {sorted(pools)}")
            if argv[:2] == ["prefect", "work-pool"] and argv[2] in ("create", "inspect") and argv[3] not in pools:
                problems.append(f"{name}: `prefect work-pool {argv[2]} {argv[3]}` is not a pool of prefect.yaml")
    problems += [f"no service runs a worker for work pool {p!r}" for p in sorted(pools - polled)]
    return problems


def check_flywheel_serve(name: str, svc: dict, argv: list[str]) -> list[str]:
    """Parse `flywheel serve ...` with the real argument parser, and match --device to the hardware reserved."""
    from flywheel.serving.launch import parser

    try:
        args = parser().parse_args(argv[2:])
    except SystemExit:
        return [f"{name}: `flywheel serve` rejects its arguments: {' '.join(argv[2:])}"]
    problems = []
    wants_gpu = "gpu" in (svc.get("profiles") or [])
    if wants_gpu != str(args.device or "").startswith("cuda"):
        problems.append(f"{name}: --device {args.device} does not match its profiles {svc.get('profiles')}")
    if args.host != "0.0.0.0":
        problems.append(f"{name}: --host {args.host}: other containers and the published port cannot reach it")
    return problems


def cli_words_and_flags(argv: list[str]) -> tuple[list[str], list[str]]:
    """(subcommand words, --flags) of argv: leading flags are global (`prefect --no-prompt deploy`)."""
    rest = argv[1:]
    while rest and rest[0].startswith("-"):
        rest = rest[1:]
    words = []
    for tok in rest:
        if tok.startswith("-"):
            break
        words.append(tok)
    flags = [t.split("=", 1)[0] for t in argv[1:] if t.startswith("--")]
    return words, flags


def check_cli_flags(compose: dict, env: dict[str, str], help_for) -> list[str]:
    """Every --flag a service passes to prefect, mlflow, dask or flywheel appears in that subcommand's --help (a flag
    renamed in a new release fails here, not at 3 a.m. in a container); `flywheel serve` goes through its own
    parser."""
    problems = []
    for name, svc in project_services(compose).items():
        argvs = service_commands(svc, env)
        if not argvs:
            problems.append(f"{name}: runs the project image but sets no command")
        for argv in argvs:
            if argv[:2] == ["flywheel", "serve"]:
                problems += check_flywheel_serve(name, svc, argv)
            elif argv[0] in ("prefect", "mlflow", "dask", "flywheel"):
                words, flags = cli_words_and_flags(argv)
                text = help_for(argv[0], tuple(words))
                problems += [f"{name}: `{argv[0]} {' '.join(words)}` has no option {f}" for f in flags
                             if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", text)]
    return problems


ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@functools.lru_cache(maxsize=None)
def real_help(program: str, words: tuple[str, ...]) -> str:
    """`<program> <words> --help` from this venv (a few seconds each: prefect and mlflow import a lot)."""
    env = os.environ | {"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    out = subprocess.run([str(BIN / program), *words, "--help"], capture_output=True, text=True, env=env, timeout=180)
    assert out.returncode == 0, f"{program} {' '.join(words)} --help failed:\n{out.stdout}\n{out.stderr}"
    return ANSI.sub("", out.stdout)


# --- the tests -------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_compose()


@pytest.fixture(scope="module")
def documented() -> dict[str, str]:
    return read_env_file()


def test_compose_file_matches_the_compose_specification(compose):
    """The Compose Specification's own schema (shared/schemas, draft-07), every error with its path."""
    import json

    if not SCHEMA.exists():
        pytest.skip(f"the Compose Specification schema is not at {SCHEMA} (shared/ sits beside the repository)")
    errors = schema_errors(compose, json.loads(SCHEMA.read_text()))
    assert not errors, "docker-compose.yml breaks the Compose Specification:\n" + "\n".join(errors)
    assert "version" not in compose, "`version:` is obsolete in the Compose Specification: remove it"


def test_every_dependency_exists_and_can_be_waited_for(compose):
    assert not (problems := check_depends_on(compose)), "\n".join(problems)


def test_every_named_volume_is_declared(compose):
    assert not (problems := check_volumes(compose)), "\n".join(problems)


def test_every_variable_is_documented_in_env_example_and_every_documented_one_used(compose, documented):
    assert not (problems := check_variables(compose, documented)), "\n".join(problems)


def test_env_example_leaves_secrets_empty_or_placeholders(documented):
    """.env.example is committed: API keys and tokens stay empty, passwords are obvious placeholders."""
    bad = [k for k, v in documented.items() if is_secret_name(k) and v and "change-me" not in v]
    assert not bad, f".env.example gives real-looking values to secrets: {bad}"


def test_published_host_ports_are_unique(compose, documented):
    assert not (problems := check_ports(compose, documented)), "\n".join(problems)


def test_every_long_running_service_has_a_healthcheck(compose):
    assert not (problems := check_healthchecks(compose)), "\n".join(problems)


def test_no_literal_secret_in_the_compose_file(compose):
    assert not (problems := check_no_literal_secrets(compose)), "\n".join(problems)


def test_gpu_services_reserve_an_nvidia_gpu(compose):
    assert any("gpu" in (s.get("profiles") or []) for s in compose["services"].values()), "no service in profile gpu"
    assert not (problems := check_gpu_reservations(compose)), "\n".join(problems)


def test_every_dockerfile_exists_installs_the_lock_runs_as_non_root_and_copies_no_secret(compose):
    dockerfiles = {(s["build"].get("context", "."), s["build"].get("dockerfile", "Dockerfile"))
                   for s in project_services(compose).values()}
    assert {d for _, d in dockerfiles} == {"Dockerfile", "Dockerfile.gpu"}
    problems = []
    for context, dockerfile in sorted(dockerfiles):
        path = ROOT / context / dockerfile
        if not path.exists():
            problems.append(f"{dockerfile}: does not exist")
            continue
        problems += check_dockerfile(path.read_text(), dockerfile)
    ignored = (ROOT / ".dockerignore").read_text().split()
    problems += [f".dockerignore does not exclude {p}" for p in (".env", ".venv", ".git", ".flywheel")
                 if p not in ignored]
    assert not problems, "\n".join(problems)


def test_the_worker_polls_the_work_pool_of_prefect_yaml(compose, documented):
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    pools = {d["work_pool"]["name"] for d in spec["deployments"]}
    assert not (problems := check_worker_pools(compose, documented, pools)), "\n".join(problems)


def test_every_command_uses_real_cli_options(compose, documented):
    assert not (problems := check_cli_flags(compose, documented, real_help)), "\n".join(problems)


PREFECT_PROBE = """
import json
from prefect.settings import Settings, get_current_settings
from prefect.settings.legacy import _get_valid_setting_names     # private, but it is the list of names
from prefect_redis.client import RedisMessagingSettings as Redis
names = set(_get_valid_setting_names(Settings))
names |= {Redis.model_config["env_prefix"] + f.upper() for f in Redis.model_fields}
s, r = get_current_settings().server, Redis()
print(json.dumps({"names": sorted(names), "resolved": {
    "database": s.database.connection_url.get_secret_value(), "broker": s.events.messaging_broker,
    "cache": s.events.messaging_cache, "ordering": s.events.causal_ordering,
    "leases": s.concurrency.lease_storage, "docket": s.docket.url, "redis": [r.host, r.port, r.db],
    "ui_api_url": s.ui.api_url, "analytics": s.analytics_enabled}}))
"""


def test_prefect_settings_are_ones_prefect_knows_and_take_effect(compose, documented):
    """A misspelt PREFECT_* variable is silently ignored (the server would fall back to in-memory messaging, which
    breaks a split API server + services): every one the stack sets must be a setting of the installed prefect or
    prefect-redis, prefect-server's must resolve to Redis and PostgreSQL in Prefect's own settings, and every
    module path given as a value must exist in the installed prefect_redis."""
    import importlib.util
    import json

    names = {k for s in project_services(compose).values() for k in env_mapping(s.get("environment"))
             if k.startswith("PREFECT_")}           # postgres's PREFECT_DB is for its init script, not for Prefect
    for dockerfile in ("Dockerfile", "Dockerfile.gpu"):
        names |= set(re.findall(r"\b(PREFECT_\w+)=", (ROOT / dockerfile).read_text()))
    server_env = env_mapping(compose["services"]["prefect-server"]["environment"])
    server_env = {k: interpolate(v, documented) for k, v in server_env.items()}
    out = subprocess.run([sys.executable, "-c", PREFECT_PROBE], capture_output=True, text=True, timeout=180,
                         env=os.environ | server_env)
    assert out.returncode == 0, out.stderr
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    unknown = sorted(names - set(probe["names"]))
    assert not unknown, f"not Prefect settings: {unknown}"
    user, password, db = documented["POSTGRES_USER"], documented["POSTGRES_PASSWORD"], documented["PREFECT_DB"]
    assert probe["resolved"] == {
        "database": f"postgresql+asyncpg://{user}:{password}@postgres:5432/{db}", "broker": "prefect_redis.messaging",
        "cache": "prefect_redis.messaging", "ordering": "prefect_redis.ordering",
        "leases": "prefect_redis.lease_storage", "docket": "redis://redis:6379/1", "redis": ["redis", 6379, 0],
        "ui_api_url": documented["PREFECT_UI_API_URL"], "analytics": False}
    package = Path(importlib.util.find_spec("prefect_redis").origin).parent       # no import: just where it is
    modules = {v for s in compose["services"].values() for v in env_mapping(s.get("environment")).values()
               if v and v.startswith("prefect_redis.")}
    missing = sorted(m for m in modules if not (package / (m.split(".", 1)[1].replace(".", "/") + ".py")).exists())
    assert modules and not missing, f"prefect_redis has no module {missing}"


def test_flywheel_variables_are_ones_the_code_reads(compose):
    """FLYWHEEL_* variables set on a service must be read somewhere (code or prefect.yaml): a typo is ignored."""
    sources = "\n".join(p.read_text() for pkg in ("flywheel", "tasks", "flows") for p in (ROOT / pkg).rglob("*.py"))
    sources += (ROOT / "prefect.yaml").read_text()
    names = {k for s in compose["services"].values() for k in env_mapping(s.get("environment"))
             if k.startswith("FLYWHEEL_")}
    unread = sorted(n for n in names if n not in sources)
    assert names and not unread, f"set on a service but read nowhere: {unread}"


def test_workers_that_run_flywheel_code_see_the_same_environment(compose):
    """The Prefect worker and the Dask workers run the same tasks: they must agree on the lake, the tracking server,
    the API and result storage, or a shard written by one is invisible to the other."""
    services = compose["services"]
    worker = env_mapping(services["prefect-worker"]["environment"])
    dask = env_mapping(services["dask-worker"]["environment"])
    assert worker == dask
    assert {v for v in services["prefect-worker"]["volumes"]} == {v for v in services["dask-worker"]["volumes"]}
    server, background = services["prefect-server"]["environment"], services["prefect-services"]["environment"]
    shared = {k: v for k, v in server.items() if k != "PREFECT_UI_API_URL"}
    assert shared == background, "prefect-server and prefect-services must share the database and Redis settings"


def mounts(svc: dict) -> list[dict]:
    """A service's volumes as {type, source, target, read_only}, whichever of the short or long syntax each uses."""
    out = []
    for vol in svc.get("volumes") or []:
        if isinstance(vol, dict):
            out.append({"type": vol.get("type", "volume"), "source": vol.get("source"), "target": vol["target"],
                        "read_only": bool(vol.get("read_only"))})
            continue
        parts = vol.split(":")
        source, target, mode = (parts + [""])[:3] if len(parts) > 1 else (None, parts[0], "")
        kind = "bind" if source and source.startswith(("/", ".", "~", "$")) else "volume"
        out.append({"type": kind, "source": source, "target": target, "read_only": "ro" in mode.split(",")})
    return out


def test_the_workbench_publishes_where_the_workers_read_and_reads_its_access_file_read_only(compose, documented):
    """Policies the workbench publishes must be the ones the flows grade with, and its drafts and previews must be
    where the worker running the policy-preview deployment reads and writes them: the same named volumes at the
    same paths in workbench, prefect-worker and dask-worker. The access file (token hashes) is mounted read-only,
    from a host file that git ignores, at the path given to --access."""
    services = compose["services"]
    wb = services["workbench"]
    by_source = {name: {m["source"]: m for m in mounts(services[name]) if m["type"] == "volume"}
                 for name in ("workbench", "prefect-worker", "dask-worker")}
    env = {k: interpolate(v, documented) for k, v in env_mapping(wb["environment"]).items() if v is not None}
    expected = {"policies": env["FLYWHEEL_REPO"] + "/policies", "flywheel-data": env["FLYWHEEL_HOME"]}
    for volume, target in expected.items():
        for name, vols in by_source.items():
            assert volume in vols, f"{name} does not mount the {volume!r} volume"
            assert vols[volume]["target"] == target, f"{name} mounts {volume!r} at {vols[volume]['target']}"
            assert not vols[volume]["read_only"], f"{name} mounts {volume!r} read-only"
    assert "policies" in (compose.get("volumes") or {})

    worker_env = env_mapping(services["prefect-worker"]["environment"])
    assert {k: v for k, v in env_mapping(wb["environment"]).items() if k in worker_env} == \
        {k: v for k, v in worker_env.items() if not is_secret_name(k)}, "the workbench sees another flywheel"

    [argv] = service_commands(wb, documented)
    assert argv[:2] == ["flywheel", "workbench"] and flag_value(argv, "--host") == "0.0.0.0"
    access = flag_value(argv, "--access")
    [mount] = [m for m in mounts(wb) if m["target"] == access]
    assert mount["type"] == "bind" and mount["read_only"], f"--access {access} is not a read-only bind mount"
    host_file = interpolate(mount["source"], documented)
    assert host_file == "./docker/workbench/access.yaml"
    ignored = subprocess.run(["git", "check-ignore", "-q", host_file], cwd=ROOT)
    assert ignored.returncode == 0, f"{host_file} holds token hashes of real users: git must ignore it"
    example = ROOT / "docker" / "workbench" / "access.example.yaml"
    assert subprocess.run(["git", "check-ignore", "-q", str(example.relative_to(ROOT))], cwd=ROOT).returncode == 1
    spec = yaml.safe_load(example.read_text())
    assert spec["identity"] in ("token", "header") and spec["header"]
    assert {u["role"] for u in spec["users"]} <= {"viewer", "editor", "publisher"}

    flow, deployment = flag_value(argv, "--preview-deployment").split("/")
    [dep] = [d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"] if d["name"] == deployment]
    assert f'@flow(name="{flow}")' in (ROOT / dep["entrypoint"].split(":")[0]).read_text()
    assert services["workbench"]["depends_on"]["prefect-deploy"]["condition"] == "service_completed_successfully"


def test_postgres_init_script_creates_both_databases_and_pg_trgm(compose):
    text = INIT_SCRIPT.read_text()
    assert os.access(INIT_SCRIPT, os.X_OK), f"{INIT_SCRIPT.relative_to(ROOT)} must be executable"
    assert "set -euo pipefail" in text and "pg_trgm" in text and "PREFECT_DB" in text and "MLFLOW_DB" in text
    pg = compose["services"]["postgres"]
    assert any(v.startswith("./docker/postgres/init-databases.sh:/docker-entrypoint-initdb.d/") for v in pg["volumes"])
    assert {"PREFECT_DB", "MLFLOW_DB"} <= set(env_mapping(pg["environment"]))


# --- the checks catch what they claim to ---------------------------------------------------------------------------


def test_interpolation_parser_reads_every_form_and_honours_the_dollar_escape():
    text = "$$NOT ${A} $B ${C:-x} ${D-y} ${E:?err msg} ${F?e} ${G:+z} $$${H} $${ESCAPED}"
    assert referenced_vars(text) == set("ABCDEFGH")
    assert interpolate("${X:-d}|${X-d}|${Y:-d}|${Z:+on}|$$Y", {"X": "", "Y": "y"}) == "d||y||$Y"
    with pytest.raises(ValueError, match="set it"):
        interpolate("${MISSING:?set it}", {})
    assert malformed_refs("${OK} ${BAD:x}") == [" ${BAD:x}"]


def test_the_checks_report_exactly_what_a_broken_compose_file_gets_wrong(documented):
    broken = load_compose()
    svcs = broken["services"]
    svcs["prefect-worker"]["depends_on"]["ghost"] = {"condition": "service_healthy"}
    svcs["redis"]["volumes"].append("undeclared:/extra")
    svcs["mlflow"]["environment"]["EXTRA_SETTING"] = "${UNDOCUMENTED_VAR:-x}"
    svcs["mlflow"]["environment"]["MY_API_KEY"] = "hunter2"
    svcs["scorer-cpu"]["ports"].append("127.0.0.1:4200:8766")
    del svcs["scorer-cpu"]["healthcheck"]
    svcs["scorer"]["deploy"] = {}
    svcs["prefect-server"]["depends_on"]["minio"] = {"condition": "service_healthy"}

    assert check_depends_on(broken) == [
        "prefect-server: depends on 'minio' (profiles ['s3']), which can be disabled while prefect-server runs "
        "(profiles none); add required: false",
        "prefect-worker: depends_on names undefined service 'ghost'"]
    assert check_volumes(broken) == ["redis: volume 'undeclared' is not declared under top-level volumes:"]
    assert check_variables(broken, documented) == [
        "${UNDOCUMENTED_VAR} (at services.mlflow.environment.EXTRA_SETTING) is not documented in .env.example"]
    assert check_no_literal_secrets(broken) == ["mlflow: environment MY_API_KEY is a literal, not a ${VAR} from .env"]
    assert check_ports(broken, documented) == ["scorer-cpu: host port 4200/tcp is already published by prefect-server"]
    assert check_healthchecks(broken) == ["scorer-cpu: long-running service without a healthcheck"]
    assert check_gpu_reservations(broken) == [
        "scorer: profile gpu but no deploy.resources.reservations.devices nvidia/gpu"]
    documented_less = {k: v for k, v in documented.items() if k != "MINIO_BUCKET"}
    assert "MINIO_BUCKET" in check_variables(load_compose(), documented_less)[0]


def test_the_command_checks_catch_a_wrong_flag_a_wrong_pool_and_a_wrong_device(documented):
    broken = load_compose()
    svcs = broken["services"]
    svcs["prefect-worker"]["command"] = ["prefect", "worker", "start", "--pool", "other", "--with-helthcheck"]
    svcs["scorer"]["command"] = ["flywheel", "serve", "--host", "0.0.0.0", "--device", "cpu"]
    svcs["scorer-cpu"]["command"] = ["flywheel", "serve", "--gpus", "1"]
    fake_help = {("prefect", ("worker", "start")): "--pool --type --with-healthcheck"}

    def help_for(program, words):
        return fake_help.get((program, words), " ".join(f for f in ("--host", "--port", "--no-services", "--all",
                                                                     "--no-prompt", "--type", "--backend-store-uri")))

    problems = check_cli_flags({"services": {k: svcs[k] for k in ("prefect-worker", "scorer", "scorer-cpu")}},
                               documented, help_for)
    assert problems == ["prefect-worker: `prefect worker start` has no option --with-helthcheck",
                        "scorer: --device cpu does not match its profiles ['gpu']",
                        "scorer-cpu: `flywheel serve` rejects its arguments: --gpus 1"]
    assert check_worker_pools(broken, documented, {"flywheel"}) == [
        "prefect-worker: polls work pool 'other'; prefect.yaml deploys to ['flywheel']",
        "no service runs a worker for work pool 'flywheel'"]


def test_the_dockerfile_check_catches_root_a_missing_lock_and_a_copied_secret():
    text = ("FROM python:3.11-slim\nCOPY .env /app/.env\nRUN pip install -r requirements.txt\n"
            "ENV OPENAI_API_KEY=sk-123\n")
    assert check_dockerfile(text, "Bad") == [
        "Bad: never runs `pip install -r requirements.lock`",
        "Bad: the final USER is root (none set)",
        "Bad: COPY .env copies a secret into the image",
        "Bad: ENV OPENAI_API_KEY bakes a secret into the image"]
