"""The policy workbench's state: drafts, published versions, the version history and the audit log.

The active policy is the file the flywheel config names (``policies/*.md``): publishing replaces it atomically
(temporary file, fsync, rename), so the next labelling run ingests and recalibrates under it, and its gate decides
whether bulk labelling may use it. Every published version is also kept under ``<home>/policies`` (the store
``ingest_policy`` already uses), so any of them can be rolled back to. Publishing is guarded by the version the
draft was started from (optimistic concurrency): if someone published in between, the publish is refused with a
diff, and nothing is lost. Drafts may be invalid; a version never is.

State lives under ``<home>/workbench``: ``drafts/<id>.json``, ``history.jsonl`` (who published what, when, why)
and ``audit.jsonl`` (append-only; each line carries the hash of the line before it, so an edited or deleted
line is detectable with :func:`verify_audit`).
"""

from __future__ import annotations

import contextlib
import difflib
import fcntl
import functools
import glob
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from flywheel.data.lake import sha256_text
from flywheel.judge.policy import Policy, PolicyError, parse_policy
from flywheel.settings import Paths

MAX_POLICY_BYTES = 2 * 1024 * 1024   # a 30-page policy is ~100 KB; thousands of worked examples fit in 2 MB


class TooLarge(ValueError):
    pass


class Conflict(RuntimeError):
    """Someone published since the draft was started: the draft is not published; ``diff`` shows what changed."""

    def __init__(self, message: str, current_version: str, diff: str):
        super().__init__(message)
        self.current_version, self.diff = current_version, diff


class NotPublishable(ValueError):
    def __init__(self, message: str, problems: list[tuple[int, str]] | None = None):
        super().__init__(message)
        self.problems = problems or []


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def stamp() -> str:
    """A draft's save time, to the microsecond: two saves within a second must differ (see save_draft)."""
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old content or the new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)   # mkstemp's 0600 would hide it
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def check_size(text: str) -> None:
    size = len(text.encode("utf-8"))
    if size > MAX_POLICY_BYTES:
        raise TooLarge(f"the policy text is {size / 1e6:.1f} MB; the workbench accepts up to "
                       f"{MAX_POLICY_BYTES / 1e6:.1f} MB (a 30-page policy is about 0.1 MB). Nothing was saved: "
                       f"your text is still in the editor — remove what was pasted by mistake, or move bulk "
                       f"examples into the golden set")


@functools.lru_cache(maxsize=16)
def parse(text: str, path: str) -> Policy:
    """:func:`parse_policy`, remembered: a page reads the same long policy several times (callers never mutate it)."""
    return parse_policy(text, path)


def validate(text: str, path: str) -> tuple[Policy | None, list[tuple[int, str]]]:
    """The policy and no problems, or None and every problem at its line — the messages of `flywheel policy check`."""
    try:
        return parse(text, path), []
    except PolicyError as exc:
        return None, exc.problems


FORM_FIELDS = ("scale", "dimensions", "examples")
FORM_MAX_EXAMPLES = 300     # beyond this many worked examples the form is read-only for them: edit the text


def _split(text: str) -> tuple[dict, str]:
    import yaml

    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        raise ValueError("the text does not start with a YAML header ('---'): fix it in the text first")
    end = next((i for i in range(1, len(lines)) if lines[i].strip() == "---"), None)
    if end is None:
        raise ValueError("the YAML header is not closed with '---': fix it in the text first")
    try:
        data = yaml.safe_load("".join(lines[1:end])) or {}
    except yaml.YAMLError as exc:
        raise ValueError(f"the YAML header does not parse ({getattr(exc, 'problem', exc)}): fix it in the text "
                         f"first") from None
    if not isinstance(data, dict):
        raise ValueError("the YAML header is not a mapping of fields: fix it in the text first")
    return data, "".join(lines[end + 1:])


def form_fields(text: str) -> dict:
    """The scale, dimensions and worked examples of a policy text, for the draft page's form."""
    data, _ = _split(text)
    out = {k: data.get(k) or [] for k in FORM_FIELDS}
    out["document_fields"] = data.get("document_fields") or ["title", "text"]
    out["examples_editable"] = len(out["examples"]) <= FORM_MAX_EXAMPLES
    return out


def with_form_fields(text: str, fields: dict) -> str:
    """``text`` with the header's scale / dimensions / examples replaced by ``fields`` (others and the guidance
    kept). The header is written again in a standard layout, so comments inside it are not kept."""
    import yaml

    data, body = _split(text)
    for key in FORM_FIELDS:
        if key in fields and not (key == "examples" and len(data.get("examples") or []) > FORM_MAX_EXAMPLES):
            rows = fields[key]
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise ValueError(f"{key} must be a list of rows")
            data[key] = [{k: v for k, v in r.items() if v not in ("", None)} for r in rows]
    header = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120, default_flow_style=False)
    return f"---\n{header}---\n{body}"


@dataclass
class Draft:
    id: str
    author: str
    base_version: str | None
    text: str
    updated_at: str
    message: str = ""
    editor: str = ""          # who saved it last

    def to_json(self) -> dict:
        return self.__dict__.copy()


class DraftChanged(RuntimeError):
    """The draft was saved elsewhere (another tab, another person) since this copy was loaded."""


VERSION = re.compile(r"[0-9a-f]{16}")


class Workbench:
    """Drafts, publishes and rollbacks of the policy at ``policy_path``; state under ``<home>/workbench``."""

    def __init__(self, policy_path: str | Path, paths: Paths):
        self.policy_path = Path(policy_path)
        self.paths = paths
        self.dir = paths.home / "workbench"
        self.versions_dir = paths.home / "policies"
        for d in (self.dir / "drafts", self.versions_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.history_path, self.audit_path = self.dir / "history.jsonl", self.dir / "audit.jsonl"
        with self._lock(), contextlib.suppress(PolicyError):   # an invalid file is shown on the page, not a crash
            version = self.keep(self.active_text())
            if version not in {r["version"] for r in _read_jsonl(self.history_path)}:
                # the version found before any publish stays in the history, so it can be rolled back to
                _append_jsonl(self.history_path, {"version": version, "parent": None, "author": None, "at": now(),
                                                  "action": "found", "name": self.active().name,
                                                  "message": f"{self.policy_path.name} as the workbench found it"})

    # ------------------------------------------------------------------ the active policy and its versions
    def active_text(self) -> str:
        if not self.policy_path.exists():
            raise FileNotFoundError(f"no policy file at {self.policy_path}: the config's `policy` must name one")
        return self.policy_path.read_text(encoding="utf-8")

    def active(self) -> Policy:
        return parse(self.active_text(), str(self.policy_path))

    def file_version(self, text: str | None = None) -> str:
        """The version of the active file; for a file that does not parse, ``unparsed-<hash>`` (so a publish or a
        rollback can still replace it, guarded like any other)."""
        text = self.active_text() if text is None else text
        try:
            return parse(text, str(self.policy_path)).version
        except PolicyError:
            return "unparsed-" + sha256_text(text)[:12]

    def active_name(self) -> str | None:
        try:
            return self.active().name
        except PolicyError:
            m = re.search(r"^name:\s*(\S+)", self.active_text(), re.M)
            return m.group(1) if m else None

    def keep(self, text: str) -> str:
        """Store a valid policy text under its version (idempotent) and return the version."""
        policy = parse(text, str(self.policy_path))
        copy = self.versions_dir / f"{policy.name}-{policy.version}.md"
        if not copy.exists():
            write_atomic(copy, text)
        return policy.version

    def version_text(self, version: str) -> str:
        if not VERSION.fullmatch(version or ""):
            raise KeyError(f"{version!r} is not a policy version (16 hexadecimal characters)")
        name = self.active_name()
        found = sorted(self.versions_dir.glob(f"{glob.escape(name)}-{version}.md" if name else f"*-{version}.md"))
        if not found:
            raise KeyError(f"policy version {version} of {name or 'this policy'} is not kept under {self.versions_dir}")
        return found[0].read_text(encoding="utf-8")

    def history(self) -> list[dict]:
        """Every version the active policy has had, newest first: the workbench's publishes and rollbacks, the
        version it found, and the versions flow runs ingested from the file (author unknown)."""
        out, seen = [], set()
        for rec in reversed(_read_jsonl(self.history_path)):   # newest first: equal seconds keep the file's order
            out.append(rec)
            seen.add(rec["version"])
        name = self.active_name()
        for rec in reversed(_read_jsonl(self.versions_dir / "versions.jsonl")):
            if rec.get("name") == name and rec["version"] not in seen:
                seen.add(rec["version"])
                out.append({"version": rec["version"], "author": None, "at": rec.get("ingested_at"),
                            "message": f"ingested by a flow run from {Path(rec.get('source', '?')).name}",
                            "action": "ingested"})
        out.sort(key=lambda r: r.get("at") or "", reverse=True)
        active = self.file_version()
        if active not in seen:
            out.insert(0, {"version": active, "author": None, "at": None, "action": "file",
                           "message": f"the file {self.policy_path.name} as it is now (changed outside the workbench)"})
        for rec in out:
            rec["active"] = rec["version"] == active
        return out

    # ------------------------------------------------------------------ drafts (may be invalid)
    def _draft_path(self, draft_id: str) -> Path:
        if not draft_id.isalnum():
            raise KeyError(f"no draft {draft_id!r}")
        return self.dir / "drafts" / f"{draft_id}.json"

    def new_draft(self, author: str, text: str | None = None) -> Draft:
        """A draft of ``text`` (default: the active policy), guarded by the active version as it is now."""
        base = self.file_version()
        d = Draft(secrets.token_hex(6), author, base, self.active_text() if text is None else text, stamp(),
                  editor=author)
        return self.save_draft(d.id, d.text, author, new=d)

    def save_draft(self, draft_id: str, text: str, editor: str, loaded_at: str | None = None,
                   new: Draft | None = None) -> Draft:
        """Save a draft's text. ``loaded_at``: the ``updated_at`` of the copy the editor started from; when the
        draft was saved since (another tab, another person), :class:`DraftChanged` and nothing is written."""
        check_size(text)
        with self._draft_lock():
            d = new or self.draft(draft_id)
            if loaded_at is not None and loaded_at != d.updated_at:
                raise DraftChanged(f"draft {d.id} was saved by {d.editor or d.author} at {d.updated_at}, after you "
                                   f"opened it: nothing was saved; your text is still in the editor — copy it, "
                                   f"reload the page, and bring your changes in")
            d.text, d.updated_at, d.editor = text, stamp(), editor
            write_atomic(self._draft_path(d.id), json.dumps(d.to_json()))
        self.audit(editor, "save-draft", draft=d.id, sha256=sha256_text(text)[:16], bytes=len(text.encode()))
        return d

    def draft(self, draft_id: str) -> Draft:
        p = self._draft_path(draft_id)
        if not p.exists():
            raise KeyError(f"no draft {draft_id!r} (discarded, or published)")
        return Draft(**json.loads(p.read_text()))

    def drafts(self) -> list[Draft]:
        ds = [Draft(**json.loads(p.read_text())) for p in (self.dir / "drafts").glob("*.json")]
        return sorted(ds, key=lambda d: d.updated_at, reverse=True)

    def discard_draft(self, draft_id: str, actor: str) -> None:
        with self._draft_lock():
            self._draft_path(draft_id).unlink(missing_ok=True)
        self.audit(actor, "discard-draft", draft=draft_id)

    # ------------------------------------------------------------------ publish and roll back
    @contextlib.contextmanager
    def _flock(self, name: str):
        with open(self.dir / name, "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)   # across processes and threads
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _lock(self):
        return self._flock(".publish.lock")

    def _draft_lock(self):
        return self._flock(".drafts.lock")

    def publish(self, text: str, base_version: str | None, author: str, message: str,
                action: str = "publish") -> dict:
        """Make ``text`` the active policy. Refused (nothing written, the refusal audited) when it is invalid, too
        large, unchanged, renames the policy, has no message, or when the active version is no longer
        ``base_version`` (:class:`Conflict`)."""
        try:
            return self._publish(text, base_version, author, message, action)
        except (NotPublishable, TooLarge) as exc:
            self.audit(author, f"{action}-refused", reason=str(exc)[:300], base_version=base_version)
            raise

    def _publish(self, text, base_version, author, message, action) -> dict:
        check_size(text)
        if not message.strip():
            raise NotPublishable("say in a few words what this version changes and why (the publish message)")
        policy, problems = validate(text, str(self.policy_path))
        if policy is None:
            raise NotPublishable(f"the draft has {len(problems)} problem(s): fix them before publishing "
                                 f"(it can still be saved as a draft)", problems)
        with self._lock():
            current_text = self.active_text()
            current = self.file_version(current_text)
            if base_version != current:
                last = next((h for h in self.history() if h["version"] == current and h.get("author")), {})
                who = f" by {last['author']}" if last.get("author") else ""
                when = f" at {last['at']}" if last.get("at") else ""
                diff = diff_text(current_text, text, f"active version {current}", "your draft")
                self.audit(author, f"{action}-refused", version=policy.version, base_version=base_version,
                           active_version=current, reason="the active version changed")
                raise Conflict(f"not published: the active policy changed since your draft started from version "
                               f"{base_version} — version {current} was published{who}{when}. Your draft is "
                               f"kept. Compare it with the active version below, bring in their changes, and "
                               f"publish again.", current, diff)
            if policy.version == current:
                raise NotPublishable(f"nothing to publish: the draft is the active version {current}")
            name = self.active_name()
            if name and policy.name != name:
                raise NotPublishable(f"the draft renames the policy from {name!r} to {policy.name!r}: a new name is "
                                     f"a new policy (its own file and golden set) — keep the name {name!r}")
            self.keep(text)
            write_atomic(self.policy_path, text)
            rec = {"version": policy.version, "parent": current, "author": author, "at": now(),
                   "message": message.strip(), "action": action, "name": policy.name}
            _append_jsonl(self.history_path, rec)
            self.audit(author, action, version=policy.version, parent=current, message=message.strip())
        return rec

    def rollback(self, to_version: str, base_version: str | None, author: str, message: str) -> dict:
        return self.publish(self.version_text(to_version), base_version, author,
                            message or f"roll back to {to_version}", action="rollback")

    # ------------------------------------------------------------------ the audit log
    def audit(self, actor: str, action: str, **detail) -> None:
        """Append one event. Each line carries the hash of the line before; ``audit.head`` holds the count and the
        last line's hash, so a removed or edited last line shows too (:func:`verify_audit`)."""
        with self._flock(".audit.lock"):
            lines = self.audit_path.read_bytes().splitlines() if self.audit_path.exists() else []
            prev = sha256_text(lines[-1].decode()) if lines else ""
            line = json.dumps({"at": now(), "actor": actor, "action": action, **detail, "prev": prev},
                              ensure_ascii=False)
            _append_jsonl(self.audit_path, json.loads(line))
            write_atomic(self.audit_path.with_name("audit.head"),
                         json.dumps({"lines": len(lines) + 1, "last": sha256_text(line)}))

    def audit_log(self) -> list[dict]:
        return _read_jsonl(self.audit_path)


def verify_audit(path: Path) -> list[int]:
    """Line numbers (1-based) where the log was edited: a line whose ``prev`` is not the hash of the line before,
    or — checked against ``audit.head`` — a last line that was changed, removed or added by hand."""
    lines = path.read_bytes().splitlines() if path.exists() else []
    bad, prev = [], ""
    for i, line in enumerate(lines, 1):
        if json.loads(line).get("prev") != prev:
            bad.append(i)
        prev = sha256_text(line.decode())
    head = path.with_name("audit.head")
    if head.exists():
        h = json.loads(head.read_text())
        if h["lines"] != len(lines) or h["last"] != prev:
            bad.append(max(len(lines), 1))
    return bad


def diff_text(old: str, new: str, old_name: str, new_name: str) -> str:
    return "".join(difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True),
                                        old_name, new_name))


def _append_jsonl(path: Path, rec: dict) -> None:
    line = (json.dumps(rec, ensure_ascii=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)   # one write of one line with O_APPEND: lines never interleave
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
