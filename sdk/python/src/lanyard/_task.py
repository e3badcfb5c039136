"""Tasks: begun on the node agent (``lanyard.task.v1.TaskIdentity``), held
for the duration of a ``with`` block, ended on exit (also on an exception
and at process exit)."""

from __future__ import annotations

import atexit
import datetime
import threading
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc
from cryptography import x509

from . import _socket, claims as _claims, tls
from ._duration import seconds
from ._errors import LanyardError, from_rpc_error
from spiffe._proto import workload_pb2

from ._gen import broker_pb2, broker_pb2_grpc, task_pb2, task_pb2_grpc

if TYPE_CHECKING:
    import ssl

    import httpx
    import requests
    from spiffe import X509Source, X509Svid

#: Seconds each call to the node agent may take.
CALL_TIMEOUT = 15.0
#: Seconds end() waits for the SVID watcher to stop.
WATCHER_JOIN = 5.0


@dataclass(frozen=True)
class Delegation:
    """A single-use token another workload presents to begin a sub-task
    (``lanyard.task(..., delegation=d)``), bound to ``to_spiffe_id``."""

    parent_task_id: str
    token: str = field(repr=False)
    #: When the token can no longer be used (at most a minute).
    expires_at: datetime.datetime
    #: The longest the sub-task may live (its default TTL).
    ttl_seconds: int


@dataclass(frozen=True)
class Credential:
    """A credential from a provider, for this task only (it never outlives
    the task). Do not log ``value``."""

    name: str
    value: str = field(repr=False)
    #: ``"bearer"``, ``"txn_token"`` or ``"secret"``.
    kind: str
    expires_at: datetime.datetime | None
    lease_id: str
    scopes: tuple[str, ...]

    def headers(self) -> dict[str, str]:
        """The HTTP header that carries it (``Authorization: Bearer`` for an
        access token, ``Txn-Token`` for a transaction token; a secret has
        no standard header: empty)."""
        if self.kind == "bearer":
            return {"Authorization": f"Bearer {self.value}"}
        if self.kind == "txn_token":
            return {"Txn-Token": self.value}
        return {}


def _utc(ts: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(ts, tz=datetime.timezone.utc)


def _split_der(blob: bytes) -> list[x509.Certificate]:
    """Concatenated DER certificates, parsed."""
    out, i = [], 0
    while i < len(blob):
        if i + 2 > len(blob) or blob[i] != 0x30:
            raise LanyardError("the node agent sent a malformed certificate chain")
        n = blob[i + 1]
        if n & 0x80:
            k = n & 0x7F
            length, head = int.from_bytes(blob[i + 2:i + 2 + k], "big"), 2 + k
        else:
            length, head = n, 2
        try:
            out.append(x509.load_der_x509_certificate(blob[i:i + head + length]))
        except ValueError as e:
            raise LanyardError(f"the node agent sent a malformed certificate: {e}") from None
        i += head + length
    return out


_live: weakref.WeakSet[Task] = weakref.WeakSet()


@atexit.register
def _end_all() -> None:
    for t in list(_live):
        t.end(quiet=True)


class Task:
    """A task this process holds. Use :func:`lanyard.task`."""

    def __init__(self, socket: str | None = None) -> None:
        self._path = _socket.socket_path(socket)
        self._channel = grpc.insecure_channel(_socket.grpc_target(self._path))
        self._tasks = task_pb2_grpc.TaskIdentityStub(self._channel)
        self._lock = threading.Lock()
        self._source: X509Source | None = None
        self._watchers: list[threading.Thread] = []
        self._ended = False
        self.id = ""
        self.spiffe_id = ""
        self.granted_tools: tuple[str, ...] = ()
        #: Tools asked for and refused (``allow_partial``), with the reason.
        self.denied: tuple[tuple[str, str], ...] = ()
        self.expires_at = _utc(0)
        self.claims: _claims.TaskClaims | None = None

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, metadata=_socket.METADATA, timeout=CALL_TIMEOUT)
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None

    def _begin(self, request: task_pb2.BeginTaskRequest) -> None:
        r: task_pb2.BeginTaskResponse = self._call(self._tasks.BeginTask, request)
        self.id = r.task_id
        self.granted_tools = tuple(r.granted_tools)
        self.denied = tuple((d.tool, d.reason) for d in r.denied)
        self.expires_at = _utc(r.expires_at)
        if r.x509_svid.x509_svid:
            leaf = _split_der(r.x509_svid.x509_svid)[0]
            self.spiffe_id = r.x509_svid.spiffe_id
            self.claims = _claims.from_certificate(leaf)
        _live.add(self)

    # The task's X.509-SVID, following rotation.

    def _pick(self, svids: list[X509Svid]) -> X509Svid:
        # Never raises: a picker that raises closes the source for good.
        for s in svids:
            try:
                c = _claims.from_certificate(s.leaf)
            except ValueError:
                continue
            if c is not None and c.task_id == self.id:
                return s
        # Not served (any more): the caller is told in svid().
        return svids[0]

    @property
    def endpoint(self) -> str:
        """The node agent's Workload API address (``unix:///...``), for
        other SPIFFE libraries in this process."""
        return f"unix://{self._path}"

    def source(self) -> X509Source:
        """The Workload API source of this task's SVID and the bundle (from
        the ``spiffe`` package), started on first use and kept current as
        the SVID renews."""
        from spiffe import X509Source

        with self._lock:
            if self._ended:
                raise LanyardError(f"task {self.id} has ended", "FAILED_PRECONDITION")
            if self._source is None:
                # The source owns its client and closes it with itself. Its
                # watcher is a daemon thread: end() waits for it, since one
                # still inside gRPC when the interpreter exits aborts it.
                before = set(threading.enumerate())
                self._source = X509Source(
                    socket_path=self.endpoint, timeout_in_seconds=CALL_TIMEOUT, svid_picker=self._pick)
                self._watchers = [t for t in threading.enumerate() if t not in before and t.daemon]
            return self._source

    def svid(self) -> X509Svid:
        """The task's current X.509-SVID."""
        svid = self.source().get_x509_context().default_svid
        c = _claims.from_certificate(svid.leaf)
        if c is None or c.task_id != self.id:
            raise LanyardError(f"the node agent no longer serves task {self.id} (ended, revoked or expired)", "NOT_FOUND")
        return svid

    def authorities(self) -> list[x509.Certificate]:
        """The trust bundle's authorities for the task's trust domain."""
        svid = self.svid()
        bundle = self.source().get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        if bundle is None:
            raise LanyardError("no trust bundle for the task's trust domain", "NOT_FOUND")
        return list(bundle.x509_authorities)

    def ssl_context(self, server_side: bool = False) -> ssl.SSLContext:
        """A fresh standard-library TLS context presenting the task SVID and
        verifying peers against the bundle (see :mod:`lanyard.tls`). Take a
        new one per connection, or use :meth:`httpx_client`, which does."""
        svid = self.svid()
        return tls.context(svid.cert_chain, svid.private_key, self.authorities(), server_side)

    def httpx_client(self, **kwargs: Any) -> httpx.Client:
        """An ``httpx.Client`` doing mutual TLS with the task SVID; new
        connections use the SVID current at the time (needs ``httpx``)."""
        from ._httpx import client

        return client(self, **kwargs)

    def httpx_async_client(self, **kwargs: Any) -> httpx.AsyncClient:
        """The same as :meth:`httpx_client` for asyncio."""
        from ._httpx import async_client

        return async_client(self, **kwargs)

    def requests_session(self) -> requests.Session:
        """A ``requests.Session`` doing mutual TLS with the task SVID for
        https:// URLs; new connections use the SVID current at the time
        (needs ``requests``)."""
        from ._requests import session

        return session(self)

    # Other credentials of the task.

    def jwt_svid(self, audience: str | Iterable[str]) -> str:
        """A task JWT-SVID for ``audience`` (one or several)."""
        if self._ended:
            raise LanyardError(f"task {self.id} has ended", "FAILED_PRECONDITION")
        aud = [audience] if isinstance(audience, str) else list(audience)
        fetch = self._channel.unary_unary(
            "/SpiffeWorkloadAPI/FetchJWTSVID",
            request_serializer=workload_pb2.JWTSVIDRequest.SerializeToString,
            response_deserializer=workload_pb2.JWTSVIDResponse.FromString,
        )
        r: workload_pb2.JWTSVIDResponse = self._call(
            fetch, workload_pb2.JWTSVIDRequest(audience=aud, spiffe_id=self.spiffe_id))
        if not r.svids:
            raise LanyardError("the node agent returned no JWT-SVID", "NOT_FOUND")
        return r.svids[0].svid

    def credential(self, name: str, scopes: Sequence[str] = (), audience: str = "") -> Credential:
        """A credential from the provider ``name`` for this task (its
        entry must allow the provider and the policy permit it)."""
        broker = broker_pb2_grpc.CredentialBrokerStub(self._channel)
        r: broker_pb2.GetCredentialResponse = self._call(
            broker.GetCredential,
            broker_pb2.GetCredentialRequest(name=name, scopes=list(scopes), audience=audience, task_id=self.id),
        )
        kind = broker_pb2.CredentialType.Name(r.type).removeprefix("CREDENTIAL_TYPE_").lower()
        return Credential(
            name=name,
            value=r.credential,
            kind=kind,
            expires_at=_utc(r.expires_at) if r.expires_at else None,
            lease_id=r.lease_id,
            scopes=tuple(r.scopes),
        )

    def delegate(self, to: str, tools: Sequence[str], ttl: int | str | datetime.timedelta | None = None) -> Delegation:
        """A single-use token for the workload ``to`` to begin a sub-task
        with a subset of this task's tools."""
        if ttl is not None:
            ttl_s = seconds(ttl)
        else:
            left = self.expires_at - datetime.datetime.now(datetime.timezone.utc)
            ttl_s = max(1, int(left.total_seconds()))
        r: task_pb2.DelegateTaskResponse = self._call(
            self._tasks.DelegateTask,
            task_pb2.DelegateTaskRequest(task_id=self.id, to_spiffe_id=to, tools=list(tools), ttl_seconds=ttl_s),
        )
        return Delegation(
            parent_task_id=self.id, token=r.delegation_token, expires_at=_utc(r.expires_at), ttl_seconds=ttl_s)

    def end(self, quiet: bool = False) -> None:
        """Ends the task (once): its SVIDs are revoked and no longer served."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            source, self._source = self._source, None
        _live.discard(self)
        try:
            if self.id:
                self._call(self._tasks.EndTask, task_pb2.EndTaskRequest(task_id=self.id))
        except LanyardError:
            if not quiet:
                raise
        finally:
            if source is not None:
                source.close()
                for t in self._watchers:
                    t.join(timeout=WATCHER_JOIN)
            self._channel.close()

    @property
    def ended(self) -> bool:
        """Whether :meth:`end` was called."""
        return self._ended

    def __enter__(self) -> Task:
        return self

    def __exit__(self, *exc: object) -> None:
        # An error ending the task must not hide the block's own exception.
        self.end(quiet=exc[0] is not None)

    def __repr__(self) -> str:
        return f"Task(id={self.id!r}, spiffe_id={self.spiffe_id!r}, tools={self.granted_tools!r})"
