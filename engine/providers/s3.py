"""Plain S3 buckets (AWS or any S3-compatible store) as a ``Target``.

The flow, per file:

1. a botocore client is made once per target, in a worker thread: credentials are found the
   standard botocore way (environment, ``profile``, shared files, instance roles); a custom
   ``endpoint_url`` gets path-style addressing; TLS trust is ``UploadConfig.ca_bundle`` when
   given, else botocore's own (``AWS_CA_BUNDLE``, the profile's ``ca_bundle``, its default
   store), and the data PUTs to the endpoint trust the same bundle;
2. a file that fits in one part (``size <= config.part_size``) is one presigned ``PutObject``;
   anything larger is a multipart upload: ``CreateMultipartUpload``, its ``UploadId``
   journaled (``MultipartStarted``) before any part is sent;
3. each part's URL is presigned by botocore (``upload_part``; SigV4 query signing, unsigned
   payload) and the bytes go through the engine's data path like every other target;
4. ``CompleteMultipartUpload`` with the ETags in part order.

Rules:
- every botocore call is blocking and runs in a worker thread (``anyio.to_thread``);
- a rerun with the journaled ``UploadId`` resumes: ``ListParts`` says which parts are stored
  (size-checked against the plan); an upload that no longer exists (``NoSuchUpload``) is
  started afresh;
- a file the journal says is done is confirmed with ``HeadObject``: the object must be there
  with the journaled ETag and the file's size, else it is uploaded again;
- botocore failures are translated here, once, to ``engine.errors`` with one-line messages
  that never carry credentials or URL signatures;
- only ids go to the journal (bucket, key, upload id), never URLs.
"""

from __future__ import annotations

import importlib.util
import ssl
import threading
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio.to_thread

from engine.errors import (
    AuthenticationError,
    ConfigError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RemoteError,
    ServiceError,
)
from engine.journal import JournalKey, MultipartStarted, s3_key
from engine.models import (
    MAX_PUT_SIZE,
    FileInfo,
    PartLimits,
    PartRequest,
    PartResult,
    PartSpec,
    Remote,
)
from engine.plan import S3_LIMITS
from engine.target import CONFIRMED, Confirmation, Target, TargetContext

__all__ = ["S3Clients", "S3Object", "S3Target", "parse_s3_url"]

T = TypeVar("T")

NO_BOTOCORE = "S3 needs botocore, which is not installed: pip install 'upload-engine[s3]'"
#: presigned URLs live this long; an expired one is re-presigned on ``refresh``
URL_EXPIRY = 3600
#: a single ``PutObject`` holds at most this many bytes
SINGLE_MAX = MAX_PUT_SIZE

_AUTH_CODES = frozenset(
    {
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
    }
)
_DENIED_CODES = frozenset({"AccessDenied", "AllAccessDisabled", "AccountProblem", "403"})
_NOT_FOUND_CODES = frozenset({"NoSuchBucket", "NoSuchUpload", "NoSuchKey", "404", "NotFound"})
_TRANSIENT_CODES = frozenset(
    {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout", "Throttling"}
)


def parse_s3_url(url: str) -> tuple[str, str]:
    """``"s3://bucket/some/key"`` -> ``("bucket", "some/key")``; ``ConfigError`` otherwise."""
    prefix = "s3://"
    if not url.startswith(prefix):
        raise ConfigError(f"not an S3 URL (expected s3://BUCKET/KEY): {url!r}")
    bucket, _, key = url[len(prefix) :].partition("/")
    if not bucket or not key:
        raise ConfigError(f"an S3 URL needs a bucket and a key (s3://BUCKET/KEY): {url!r}")
    return bucket, key


def translate(exc: BaseException, doing: str) -> RemoteError:
    """Map a botocore failure to the engine's tree (one line, no secrets)."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return AuthenticationError(
            f"{doing}: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE)",
            code="NoCredentials",
        )
    if isinstance(exc, bx.ProfileNotFound):
        return AuthenticationError(f"{doing}: {exc}", code="ProfileNotFound")
    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {})
        code = str(err.get("Code", "") or "")
        message = str(err.get("Message", "") or code or "failed").splitlines()[0]
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        text = f"{doing}: {code}: {message}" if code else f"{doing}: {message}"
        if code in _AUTH_CODES:
            return AuthenticationError(text, code=code)
        if code in _DENIED_CODES or status == 403:
            return PermissionDeniedError(text, code=code or "AccessDenied")
        if code in _NOT_FOUND_CODES or status == 404:
            return NotFoundError(text, code=code or "NotFound")
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return ServiceError(text, code=code)
        return InvalidRequestError(text, code=code)
    if isinstance(exc, bx.SSLError):
        return ServiceError(
            f"{doing}: the S3 endpoint's TLS certificate is not trusted (SSLError): give its "
            "CA bundle (UploadConfig.ca_bundle / --ca-bundle, or AWS_CA_BUNDLE)"
        )
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectionError):
        return ServiceError(f"{doing}: cannot reach the S3 endpoint ({type(exc).__name__})")
    if isinstance(exc, bx.ParamValidationError):
        return InvalidRequestError(f"{doing}: {str(exc).splitlines()[0]}")
    if isinstance(exc, bx.BotoCoreError):
        return ServiceError(f"{doing}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    return ServiceError(f"{doing}: {type(exc).__name__}")


@dataclass(frozen=True, slots=True, kw_only=True)
class S3Object(Remote):
    """The stored object: its bucket, key and ETag (``upload_id`` "" for a single PUT)."""

    bucket: str
    key: str
    etag: str
    upload_id: str = ""


class S3Clients:
    """One botocore client for many targets (``S3Target(..., clients=)``): made once per
    (endpoint, region, profile, TLS settings), on first use, in a worker thread; botocore
    clients are thread-safe. Without it each target makes its own (about 100 ms of CPU)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._made: dict[tuple[object, ...], tuple[Any, ssl.SSLContext | None]] = {}

    def __repr__(self) -> str:
        return f"<S3Clients {len(self._made)} made>"

    def client_for(self, target: S3Target) -> Any:
        """The client ``target`` would make (blocking: call it in a worker thread)."""
        t = target
        key = (t.endpoint_url, t.region, t.profile, t.verify_tls, t._ca_bundle)
        with self._lock:
            made = self._made.get(key)
            if made is None:
                made = (t._make_client(), t._data_tls)
                self._made[key] = made
        target._data_tls = made[1]
        return made[0]


class S3Target(Target):
    """One file to ``s3://bucket/key``.

    endpoint_url: an S3-compatible endpoint (MinIO, a local test server); switches to
                  path-style addressing.
    region:       the bucket's region (default: the profile's, else ``us-east-1``).
    profile:      a named profile of the shared AWS config/credentials files.
    verify_tls:   verify the endpoint's certificate on control-plane calls (the data path
                  follows ``UploadConfig.verify_tls``); the CA bundle is
                  ``UploadConfig.ca_bundle``, else botocore's (``AWS_CA_BUNDLE``, the
                  profile's ``ca_bundle``).
    clients:      an ``S3Clients`` shared by many targets (one botocore client for all).

    Without a journal on disk (``Uploader(journal=None)``) a multipart upload that is
    cancelled or fails is aborted (``AbortMultipartUpload``); with one it is kept, and a
    rerun resumes it.
    """

    kind = "s3"
    remote_type = S3Object

    def __init__(
        self,
        bucket: str,
        key: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        verify_tls: bool = True,
        clients: S3Clients | None = None,
    ) -> None:
        if not bucket or not key:
            raise ConfigError("S3Target needs a bucket and a key")
        if importlib.util.find_spec("botocore") is None:
            raise ConfigError(NO_BOTOCORE)
        self._clients = clients
        self.bucket = bucket
        self.key = key
        self.endpoint_url = endpoint_url
        self.region = region
        self.profile = profile
        self.verify_tls = verify_tls
        self._client: Any = None
        self._ca_bundle: str | None = None  # UploadConfig.ca_bundle, bound by each call
        self._data_tls: ssl.SSLContext | None = None  # botocore's own bundle, for the PUTs
        self._upload_id: str | None = None  # None: a single PutObject
        self._stored: dict[int, PartResult] = {}

    def __repr__(self) -> str:
        state = f"upload={self._upload_id}" if self._upload_id else "no upload"
        return f"<S3Target s3://{self.bucket}/{self.key} {state}>"

    def journal_key(self, file: FileInfo) -> JournalKey:
        return s3_key(self.endpoint_url or "", self.bucket, self.key, file)

    # --- botocore, always in a worker thread ---------------------------------------------
    def _make_client(self) -> Any:
        import botocore.session
        from botocore.config import Config

        session = botocore.session.Session(profile=self.profile)
        if session.get_credentials() is None:
            from botocore.exceptions import NoCredentialsError

            raise NoCredentialsError()
        s3cfg: dict[str, Any] = {"addressing_style": "path" if self.endpoint_url else "auto"}
        # verify=None lets botocore find AWS_CA_BUNDLE / the profile's ca_bundle (True would
        # ignore both); an explicit bundle wins over them.
        verify: str | bool | None = False if not self.verify_tls else self._ca_bundle
        own = session.get_config_variable("ca_bundle")
        if self.verify_tls and self._ca_bundle is None and own:
            self._data_tls = _context_of(str(own))
        return session.create_client(
            "s3",
            region_name=self.region or session.get_config_variable("region") or "us-east-1",
            endpoint_url=self.endpoint_url,
            verify=verify,
            config=Config(
                signature_version="s3v4",
                s3=s3cfg,
                retries={"max_attempts": 5, "mode": "standard"},
                # parts are checked by their MD5 ETags; no checksum params in presigned URLs
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    async def _call(
        self, ctx: TargetContext, doing: str, fn: Callable[..., T], *args: Any, **kwargs: Any
    ) -> T:
        self._ca_bundle = ctx.config.ca_bundle

        def run() -> T:
            try:
                if self._client is None:
                    shared = self._clients
                    self._client = shared.client_for(self) if shared else self._make_client()
                return fn(self._client, *args, **kwargs)
            except Exception as exc:
                raise translate(exc, doing) from exc

        return await anyio.to_thread.run_sync(run)

    def tls(self, ctx: TargetContext) -> ssl.SSLContext | None:
        return self._data_tls  # botocore's bundle (AWS_CA_BUNDLE), when no ca_bundle is given

    async def abandon(self, ctx: TargetContext) -> None:
        """No journal keeps this upload: abort the multipart upload ``prepare`` started."""
        upload_id, self._upload_id = self._upload_id, None
        if upload_id is None:
            return
        await self._call(
            ctx,
            f"abort the upload to s3://{self.bucket}/{self.key}",
            lambda c: c.abort_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=upload_id
            ),
        )

    async def confirm(self, remote: Remote, ctx: TargetContext) -> Confirmation:
        """The journaled object is there: ``HeadObject`` answers its ETag and the file's size."""
        where = f"s3://{self.bucket}/{self.key}"
        etag = remote.etag if isinstance(remote, S3Object) else ""
        try:
            head = await self._call(
                ctx,
                f"look up {where}",
                lambda c: c.head_object(Bucket=self.bucket, Key=self.key),
            )
        except NotFoundError:
            return Confirmation(False, f"{where} is not there")
        found, size = str(head.get("ETag", "")), int(head.get("ContentLength", -1))
        if (found, size) != (etag, ctx.file.size):
            return Confirmation(False, f"{where} holds another object (ETag {found}, {size} bytes)")
        return CONFIRMED

    # --- Target -------------------------------------------------------------------------------
    async def prepare(self, ctx: TargetContext) -> PartLimits:
        where = f"s3://{self.bucket}/{self.key}"
        if ctx.file.size <= min(ctx.config.part_size, SINGLE_MAX):
            self._upload_id = None
            # A missing bucket or bad credentials fail here, in one line; a key that may
            # PutObject without ListBucket is refused HeadBucket: the PUT itself will tell.
            with suppress(PermissionDeniedError):
                await self._call(ctx, f"reach {where}", lambda c: c.head_bucket(Bucket=self.bucket))
            return PartLimits(min_size=0, max_size=SINGLE_MAX, max_parts=1, single=True)
        known = ctx.journal.state.get(MultipartStarted)
        if known and (known.bucket, known.key) == (self.bucket, self.key):
            try:
                self._stored = await self._call(
                    ctx, f"list parts of {where}", self._list_parts, known.upload_id
                )
                self._upload_id = known.upload_id
                ctx.phase(f"resuming upload of {where} ({len(self._stored)} parts stored)")
                return S3_LIMITS
            except NotFoundError:
                pass  # aborted or completed meanwhile: start again
        created = await self._call(
            ctx,
            f"start an upload to {where}",
            lambda c: c.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, ContentType="application/octet-stream"
            ),
        )
        self._upload_id = str(created["UploadId"])
        self._stored = {}
        ctx.journal.record(MultipartStarted(self.bucket, self.key, self._upload_id))
        return S3_LIMITS

    def _list_parts(self, client: Any, upload_id: str) -> dict[int, PartResult]:
        out: dict[int, PartResult] = {}
        marker = 0
        while True:
            page = client.list_parts(
                Bucket=self.bucket, Key=self.key, UploadId=upload_id, PartNumberMarker=marker
            )
            for p in page.get("Parts", []):
                n = int(p["PartNumber"])
                out[n] = PartResult(n, str(p["ETag"]), int(p["Size"]))
            if not page.get("IsTruncated"):
                return out
            marker = int(page["NextPartNumberMarker"])

    async def stored_parts(
        self, plan: Sequence[PartSpec], ctx: TargetContext
    ) -> dict[int, PartResult]:
        sizes = {p.number: p.size for p in plan}
        return {n: r for n, r in self._stored.items() if sizes.get(n) == r.size}

    async def part_request(
        self, part: PartSpec, ctx: TargetContext, *, refresh: bool
    ) -> PartRequest:
        if self._upload_id is None:
            op = "put_object"
            params: dict[str, object] = {"Bucket": self.bucket, "Key": self.key}
        else:
            op = "upload_part"
            params = {
                "Bucket": self.bucket,
                "Key": self.key,
                "UploadId": self._upload_id,
                "PartNumber": part.number,
            }
        url = await self._call(
            ctx,
            f"presign part {part.number}",
            lambda c: c.generate_presigned_url(op, Params=params, ExpiresIn=URL_EXPIRY),
        )
        return PartRequest(url=str(url), method="PUT")

    async def complete(self, parts: Sequence[PartResult], ctx: TargetContext) -> S3Object:
        where = f"s3://{self.bucket}/{self.key}"
        if self._upload_id is None:
            return S3Object(bucket=self.bucket, key=self.key, etag=parts[0].etag if parts else "")
        upload_id = self._upload_id
        done = await self._call(
            ctx,
            f"complete the upload to {where}",
            lambda c: c.complete_multipart_upload(
                Bucket=self.bucket,
                Key=self.key,
                UploadId=upload_id,
                MultipartUpload={
                    "Parts": [{"ETag": p.etag, "PartNumber": p.number} for p in parts]
                },
            ),
        )
        return S3Object(
            bucket=self.bucket, key=self.key, etag=str(done.get("ETag", "")), upload_id=upload_id
        )


def _context_of(bundle: str) -> ssl.SSLContext:
    """A verifying TLS context that trusts ``bundle`` (botocore's own CA bundle) only."""
    try:
        return ssl.create_default_context(cafile=bundle)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"CA bundle {bundle} (AWS_CA_BUNDLE or the profile's ca_bundle): {exc}"
        ) from None
