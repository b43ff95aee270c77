"""Certificate references (reconcilers/infra/secretrefs.py): certificates the daemon's own infra resources need,
issued by the vault's PKI at apply time, kept sealed, renewed before expiry.

    parse        `cert:<mount>/issue/<role>?cn=..&alt=..&ip=..&ttl=..#<part>` -> CertRef; InputError otherwise
    CertIssuer   locate   (validate/plan; no vault needed) a keyed fingerprint of (request, generation): the
                          generation moves when the certificate is renewed (or due), so the resources using it
                          change spec and are re-applied in that run; nothing else about it moves a plan
                 resolve  (apply) the part's PEM: one issue per request (all parts of it share one key), kept
                          in the barrier at sys/stratum/certs/<request id>, issued again once due (renewal.py's
                          fraction of the lifetime). Vault disabled, sealed or standby, the mount or the role
                          not there (yet): a deferred WaitingError (the file's action ends as a non-fatal
                          `waiting` item, the run succeeds) and the request is remembered as waiting. A request
                          the role refuses: TerminalError
                 waiting  the requests that waited: when the vault opens it asks for a run (Scheduler.rerun)
                 arm      a timer at the earliest renewal time: when it fires, the daemon runs again
                          (Scheduler.rerun), which renews and rewrites what uses the certificate

`<data>/vault/certs.json` keeps what is public about each request (generation, serial, not_after, renew_at,
the certificate's SHA-256): locate reads it while the vault is sealed. `<data>/vault/certs-waiting.json` lists
the request ids that waited (read from disk each time: a CLI apply may have added one while the daemon ran).
Keys never leave the barrier but to the file that names them, and no plan, log or record holds a PEM.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qsl

from reconcilers.errors import InputError, StratumError, TerminalError, WaitingError
from reconcilers.ports import Scheduler, SecretLocation, Timer
from reconcilers.vault.fingerprints import FingerprintKey
from reconcilers.vault.keysource import SEALED_HINT
from reconcilers.vault.pki.errors import PkiError, PkiNotFound

PREFIX = "cert:"
PARTS = ("certificate", "private_key", "ca_chain")
BARRIER_PREFIX = "sys/stratum/certs/"
_PATH = re.compile(r"^([A-Za-z0-9_-]+(?:/[A-Za-z0-9_-]+)*)/issue/([A-Za-z0-9_.-]{1,128})$")
_MAX_TEXT = 8192
MIN_REARM_S = 60.0                 # a due certificate that a run could not renew is tried again after this
MAX_ARM_S = 86_400.0               # timers are re-armed at least daily (a clock step is then caught)
NEXT_RUN = "the file is left as it is, and the daemon runs again once the vault opens"


def _renewal() -> ModuleType:
    """renewal.py, imported when a certificate is issued or checked: it loads cryptography.x509 (~40 ms), which
    locating a reference (validate, plan) does not need."""
    from reconcilers.vault.pki import renewal

    return renewal


def is_cert_reference(text: str) -> bool:
    """True when `text` is a certificate reference (not a KV secret reference)."""
    return text.startswith(PREFIX)


@dataclass(frozen=True, slots=True)
class CertRef:
    """One parsed certificate reference: the request (what is issued) and the part wanted of it."""

    text: str
    mount: str
    role: str
    common_name: str
    alt_names: tuple[str, ...]
    ip_sans: tuple[str, ...]
    ttl: str
    part: str

    @property
    def request(self) -> str:
        """The reference without its part: one certificate per request."""
        return self.text.rpartition("#")[0]

    @property
    def request_id(self) -> str:
        """A stable id of the request (barrier path, metadata key)."""
        return hashlib.sha256(self.request.encode()).hexdigest()[:32]


def parse(text: str) -> CertRef:
    """A certificate reference from its text; InputError saying what is wrong."""
    hint = ('write { certificate = "pki/issue/<role>", common_name = "host.example", part = "certificate" } '
            '(part: certificate, private_key or ca_chain)')
    if not text.startswith(PREFIX) or len(text) > _MAX_TEXT:
        raise InputError(f"{text[:80]!r} is not a certificate reference", where=text[:80], hint=hint)
    rest, _, part = text[len(PREFIX):].rpartition("#")
    path, _, query = rest.partition("?")
    m = _PATH.match(path)
    if m is None or part not in PARTS:
        raise InputError(f"certificate reference {text[:120]!r}: `certificate` must be <mount>/issue/<role> and "
                         "part one of certificate, private_key, ca_chain", where=text[:120], hint=hint)
    fields = dict(parse_qsl(query, keep_blank_values=True))
    if not fields.get("cn"):
        raise InputError(f"certificate reference {text[:120]!r} has no common_name", where=text[:120], hint=hint)
    alt = tuple(n for n in fields.get("alt", "").split(",") if n)
    ips = tuple(n for n in fields.get("ip", "").split(",") if n)
    return CertRef(text, m.group(1), m.group(2), fields["cn"], alt, ips, fields.get("ttl", ""), part)


class CertIssuer:
    """Issue, keep and renew the certificates of certificate references (see the module docstring).
    `service` answers the running vault service (None where none runs); `clock` is the time (tests move it)."""

    def __init__(self, service: Callable[[], Any], state_dir: Path, fingerprints: Callable[[], FingerprintKey],
                 fraction: float | None = None,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        # None: renewal.DEFAULT_FRACTION, resolved when a certificate is issued or checked (not at construction:
        # locating references, as validate does, needs no cryptography.x509).
        if fraction is not None and not 0 < fraction <= 1:
            raise StratumError(f"[vault] cert_renew_fraction {fraction} is not in (0, 1]",
                               where="[vault] cert_renew_fraction", hint="use e.g. 0.66 (renew at two thirds)")
        self._service = service
        self._fingerprints = fingerprints
        self.fraction = fraction
        self.clock = clock
        self._meta_file = state_dir / "certs.json"
        self._waiting_file = state_dir / "certs-waiting.json"
        self._lock = threading.RLock()
        self._meta: dict[str, dict[str, Any]] = self._read_meta()
        self._timer: Timer | None = None
        self.min_rearm_s = MIN_REARM_S
        self._used: dict[str, set[str]] = {}          # revision -> request ids its resources reference

    # metadata in clear (public facts only) -------------------------------------------------------------
    def _read_meta(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self._meta_file.read_text())
        except (OSError, ValueError):
            return {}
        return {str(k): dict(v) for k, v in data.items()} if isinstance(data, dict) else {}

    def _write_meta(self) -> None:
        self._write_json(self._meta_file, self._meta)

    # requests that waited for the vault ---------------------------------------------------------------
    def waiting(self) -> frozenset[str]:
        """The request ids whose last resolve waited for the vault (disabled, sealed, standby, no mount or role)."""
        try:
            data = json.loads(self._waiting_file.read_text())
        except (OSError, ValueError):
            return frozenset()
        return frozenset(str(x) for x in data) if isinstance(data, list) else frozenset()

    def _set_waiting(self, request_id: str, waits: bool) -> None:
        with self._lock:
            before = self.waiting()
            after = before | {request_id} if waits else before - {request_id}
            if after != before:
                self._write_json(self._waiting_file, sorted(after))

    def _write_json(self, path: Path, data: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
        tmp.write_text(json.dumps(data, sort_keys=True, indent=1))
        os.replace(tmp, path)

    def _due(self, meta: dict[str, Any] | None, now: dt.datetime) -> bool:
        return meta is not None and now >= dt.datetime.fromisoformat(str(meta["renew_at"]))

    # locate: validate and plan time ---------------------------------------------------------------------
    def locate(self, reference: str, revision: str = "") -> SecretLocation:
        """A keyed fingerprint of (request, generation): it moves when the certificate is renewed or due."""
        ref = parse(reference)
        with self._lock:
            self._used.setdefault(revision, set()).add(ref.request_id)
            while len(self._used) > 16:
                self._used.pop(next(iter(self._used)))
            meta = self._meta.get(ref.request_id)
            generation = int(meta["generation"]) if meta else 0
            if self._due(meta, self.clock()):
                generation += 1                      # due: this run renews it and rewrites its users
        fp = self._fingerprints().of(b"certificate", ref.request.encode(), str(generation).encode())
        # The action id of the role's declaration (reconcilers/vault/declared_plan.py: vault:engines/<target>),
        # so a file using the certificate is applied after a role declared in the same run.
        return SecretLocation(reference, f"{ref.mount}/roles/{ref.role}",
                              f"vault:engines/{ref.mount}/roles/{ref.role}", fp)

    # resolve: apply time ------------------------------------------------------------------------------
    def resolve(self, reference: str) -> str:
        """The PEM of the reference's part, from the one certificate of its request (issued or renewed now
        when there is none or it is due). A request that cannot be issued until someone acts on the vault raises
        a deferred WaitingError and is remembered as waiting (`waiting`): the vault asks for a run when it opens."""
        ref = parse(reference)
        try:
            pem = self._resolve(ref)
        except WaitingError:
            self._set_waiting(ref.request_id, True)
            raise
        self._set_waiting(ref.request_id, False)
        return pem

    def _resolve(self, ref: CertRef) -> str:
        service = self._service()
        if service is None:
            raise WaitingError(f"certificate {ref.request}: the vault service is not enabled on this daemon "
                               "(only stratumd with [vault] enabled serves it; a CLI apply never does)",
                               where=ref.request, hint="set [vault] enabled = true in stratumd.toml, restart "
                               f"stratumd, `stratum vault init` and unseal it; {NEXT_RUN}", after=5.0, defer=True)
        if service.barrier.sealed:
            raise WaitingError(f"certificate {ref.request}: {SEALED_HINT}", where=ref.request,
                               hint=NEXT_RUN, after=2.0, defer=True)
        if service.standby:
            raise WaitingError(f"certificate {ref.request}: this vault node is a standby", where=ref.request,
                               hint="the active node issues it", after=5.0, defer=True)
        with self._lock:
            path = BARRIER_PREFIX + ref.request_id
            raw = service.barrier.get(path)
            stored: dict[str, Any] | None = json.loads(raw) if raw else None
            now = self.clock()
            if stored is None or _renewal().needs_renewal(str(stored["certificate"]), now, self._fraction()):
                stored = self._issue(service, ref, stored, now)
                service.barrier.put(path, json.dumps(stored).encode())
            self._remember(ref, stored)
            return str(stored[ref.part])

    def _issue(self, service: Any, ref: CertRef, before: dict[str, Any] | None, now: dt.datetime,
               ) -> dict[str, Any]:
        # A mount or role not there yet waits (the same revision may declare it, applied by the vault's own
        # actions); a request the role refuses is the revision's fault: terminal.
        found = service.mounts.find(f"{ref.mount}/issue/{ref.role}")
        if found is None or found[0].type != "pki":
            raise WaitingError(f"certificate {ref.request}: there is no PKI mount at {ref.mount}/",
                               where=ref.request, hint="mount the pki engine there and declare its CA and role "
                                                       "(vault/pki/), or fix `certificate`", after=5.0,
                               defer=True)
        try:
            files = _renewal().issue_files(service.mounts.store_of(found[0]), ref.role, ref.common_name,
                                        alt_names=ref.alt_names, ip_sans=ref.ip_sans, ttl=ref.ttl, now=now,
                                        fraction=self._fraction())
        except PkiNotFound as err:
            raise WaitingError(f"certificate {ref.request}: {err.what}", where=ref.request,
                               hint=f"declare role {ref.role} on the {ref.mount} mount (vault/pki/)", after=5.0,
                               defer=True) from err
        except PkiError as err:
            raise TerminalError(f"certificate {ref.request}: {err.what}", where=ref.request,
                                hint=err.hint or "fix the reference to fit the role") from err
        generation = int(before["generation"]) + 1 if before is not None else 0
        # The replaced certificate is revoked once a run that wrote the new one succeeds (`applied`).
        superseded = [*before.get("superseded", []), before["serial_number"]] if before is not None else []
        return {"certificate": files.certificate, "private_key": files.private_key, "ca_chain": files.ca_chain,
                "serial_number": files.serial_number, "not_after": files.not_after.isoformat(),
                "renew_at": files.renew_at.isoformat(), "generation": generation, "superseded": superseded}

    def _remember(self, ref: CertRef, stored: dict[str, Any]) -> None:
        digest = hashlib.sha256(str(stored["certificate"]).encode()).hexdigest()
        meta = {"request": ref.request, "generation": int(stored["generation"]),
                "serial_number": stored["serial_number"], "not_after": stored["not_after"],
                "renew_at": stored["renew_at"], "certificate_sha256": digest}
        if stored.get("superseded"):
            meta["superseded"] = list(stored["superseded"])
        if self._meta.get(ref.request_id) != meta:
            self._meta[ref.request_id] = meta
            self._write_meta()

    def _fraction(self) -> float:
        """The share of a certificate's lifetime after which it is issued again."""
        fraction: float = _renewal().DEFAULT_FRACTION if self.fraction is None else self.fraction
        return fraction

    # renewal timer ------------------------------------------------------------------------------------
    def next_renewal(self) -> dt.datetime | None:
        """The earliest renewal time of the certificates issued so far."""
        with self._lock:
            times = [dt.datetime.fromisoformat(str(m["renew_at"])) for m in self._meta.values()]
        return min(times) if times else None

    def arm(self, scheduler: Scheduler | None) -> float | None:
        """(Re)arm the renewal timer at the earliest renewal time; seconds until it fires, or None."""
        if scheduler is None:
            return None
        when = self.next_renewal()
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if when is None:
                return None
            # Overdue (a run could not renew: sealed, a role gone): ask again after a pause, never in a loop.
            delay = (when - self.clock()).total_seconds()
            delay = self.min_rearm_s if delay <= 0 else min(delay, MAX_ARM_S)
            self._timer = scheduler.call_later(delay, lambda: self._fire(scheduler), name="vault-cert-renewal")
            return delay

    def _fire(self, scheduler: Scheduler) -> None:
        now = self.clock()
        with self._lock:
            due = [m["request"] for m in self._meta.values() if self._due(m, now)]
            self._timer = None
        if due:
            scheduler.rerun(f"certificate renewal ({len(due)} due)")
        self.arm(scheduler)

    def applied(self, revision: str) -> None:
        """`revision` is in force: forget the metadata of requests it no longer references (their sealed copies
        stay in the barrier, unused), so their renewal times no longer wake the daemon, nor an unseal."""
        with self._lock:
            used = self._used.get(revision, set())
            stale = set(self._meta) - used
            for rid in stale:
                self._meta.pop(rid)
            if stale:
                self._write_meta()
            waiting = self.waiting()
            if waiting - used:
                self._write_json(self._waiting_file, sorted(waiting & used))
            self._revoke_superseded([rid for rid in used if self._meta.get(rid, {}).get("superseded")])

    def _revoke_superseded(self, rids: list[str]) -> None:
        """Revoke the certificates renewals replaced, now that the files hold the new ones (vault open only:
        else the next succeeded run does it); the request's record then lists none."""
        service = self._service()
        if not rids or service is None or service.barrier.sealed or service.standby:
            return
        from reconcilers.vault.service.errors import ServiceError

        for rid in rids:
            ref = parse(str(self._meta[rid]["request"]) + "#certificate")
            found = service.mounts.find(f"{ref.mount}/issue/{ref.role}")
            raw = service.barrier.get(BARRIER_PREFIX + rid)
            if found is None or not raw:
                continue
            stored = json.loads(raw)
            try:
                _renewal().revoke_superseded(service.mounts.store_of(found[0]), list(stored.get("superseded", [])),
                                          self.clock())
                stored["superseded"] = []
                service.barrier.put(BARRIER_PREFIX + rid, json.dumps(stored).encode())
            except (ServiceError, OSError):
                continue                  # the vault's storage failed: the next succeeded run tries again
            self._remember(ref, stored)

    def close(self) -> None:
        """Cancel the timer."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
