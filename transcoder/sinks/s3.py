"""``type=s3,bucket=B,region=R[,endpoint_url=U][,prefix=P]``: an S3 bucket as a sink.

Requests are signed and sent by botocore (``pip install 'transcoder[s3]'``).
Credentials come from botocore's usual chain: ``access_key_id=`` and
``secret_access_key=`` (and ``session_token=``) if given, else the
environment, the shared config and credentials files (``profile=`` picks a
profile), and instance or container roles.

Immutability rests on S3's conditional writes: every published object is
created with ``If-None-Match: *`` (PutObject, or CompleteMultipartUpload),
so a second writer gets 412 and treats it as "already exists". Blobs whose
digest is known only at the end are uploaded in parts under ``ingest/`` and
published by a multipart server-side copy (UploadPartCopy) completed with
``If-None-Match: *``; a single CopyObject would be simpler, but not every
S3 implementation honours conditions on it. Incomplete multipart uploads left
by a crash are invisible; ``transcoder gc`` aborts those under the prefix (as
would a bucket lifecycle rule, AbortIncompleteMultipartUpload).
"""

from __future__ import annotations

import functools
import io
import os
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, BinaryIO

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError, ProfileNotFound

from ..deadline import Deadline, call_within, socket_of
from ..errors import AuthError, Conflict, NotFound, SinkError, TranscoderError, TransientError, UsageError
from .objectstore import Leftover, ObjectReader, ObjectSink, buffered
from .options import Tuning, check_known, int_option, prefix_option, tuning_options

MIN_PART = 5 << 20  # S3's minimum for every part but the last
MAX_PART = 5 << 30
COPY_PART = 512 << 20  # server-side copy range per request (S3 allows up to 5 GiB)
OPTIONS = {"bucket", "region", "endpoint_url", "prefix", "profile", "access_key_id", "secret_access_key",
           "session_token", "use_path_style", "part_size", "upload_concurrency", "retries"}
AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
              "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem"}
TRANSIENT_CODES = {"SlowDown", "RequestTimeout", "RequestTimeTooSkewed", "InternalError", "ServiceUnavailable", "Throttling"}
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class S3Sink(ObjectSink):
    def __init__(self, bucket: str, *, region: str | None = None, endpoint_url: str | None = None, prefix: str = "",
                 profile: str | None = None, credentials: dict[str, str] | None = None, path_style: bool | None = None,
                 tuning: Tuning | None = None, retries: int | None = None) -> None:
        tuning = tuning or Tuning()
        location = f"s3:{bucket}/{prefix.rstrip('/')}" if prefix else f"s3:{bucket}"
        client = _client(location, region, endpoint_url, profile, credentials or {}, path_style, tuning, retries)
        secrets = [v for k, v in (credentials or {}).items() if k != "aws_access_key_id"]
        super().__init__(_S3Store(client, bucket, location, secrets, tuning.concurrency), location, prefix, tuning)

    @classmethod
    def from_options(cls, opts: dict[str, str]) -> S3Sink:
        check_known("s3", opts, OPTIONS, ("bucket",))
        if not _BUCKET.fullmatch(opts["bucket"]):
            raise UsageError(f"type=s3: option bucket={opts['bucket']!r} is not a valid bucket name")
        url = opts.get("endpoint_url")
        if url is not None and not url.startswith(("http://", "https://")):
            raise UsageError(f"type=s3: option endpoint_url={url!r} must start with http:// or https://")
        if ("access_key_id" in opts) != ("secret_access_key" in opts):
            raise UsageError("type=s3: access_key_id= and secret_access_key= go together")
        names = {"access_key_id": "aws_access_key_id", "secret_access_key": "aws_secret_access_key",
                 "session_token": "aws_session_token"}
        creds = {names[k]: v for k, v in opts.items() if k in names}
        style = opts.get("use_path_style")
        if style not in (None, "true", "false"):
            raise UsageError(f"type=s3: option use_path_style={style!r} must be true or false")
        retries = int_option("s3", "retries", opts["retries"], 0, 20) if "retries" in opts else None
        prefix = prefix_option("s3", opts.get("prefix", ""))
        return cls(opts["bucket"], region=opts.get("region"), endpoint_url=url, prefix=prefix,
                   profile=opts.get("profile"), credentials=creds, path_style=None if style is None else style == "true",
                   tuning=tuning_options("s3", opts, MIN_PART, MAX_PART), retries=retries)


def _client(location: str, region: str | None, endpoint_url: str | None, profile: str | None, creds: dict[str, str],
            path_style: bool | None, tuning: Tuning, retries: int | None) -> Any:
    try:
        session = botocore.session.Session(profile=profile)
        region = region or os.environ.get("AWS_REGION") or session.get_config_variable("region")
        if not region:
            raise UsageError(f"type=s3 ({location}) needs region= (or AWS_REGION, or a region in the profile)")
        if path_style is None:
            path_style = endpoint_url is not None  # S3-compatible services mostly want path style
        config = Config(region_name=region, s3={"addressing_style": "path" if path_style else "auto"},
                        retries={"mode": "standard", **({"total_max_attempts": retries + 1} if retries is not None else {})},
                        max_pool_connections=2 * tuning.concurrency + 8, connect_timeout=20, read_timeout=120)
        return session.create_client("s3", endpoint_url=endpoint_url, config=config, **creds)
    except ProfileNotFound as exc:
        raise UsageError(f"type=s3: option profile={profile!r}: no such profile in the AWS config files") from exc
    except BotoCoreError as exc:
        raise SinkError(f"{location}: cannot set up the S3 client: {type(exc).__name__}") from exc


def _code(exc: BaseException) -> str:
    return str(getattr(exc, "code", ""))


class _S3Store:
    """The object-store protocol on one bucket; every botocore error is converted."""

    def __init__(self, client: Any, bucket: str, location: str, secrets: list[str], concurrency: int) -> None:
        self.client, self.bucket, self.location = client, bucket, location
        self._secrets = [s for s in secrets if s]
        self._concurrency = concurrency

    @contextmanager
    def errors(self, what: str) -> Iterator[None]:
        try:
            yield
        except TranscoderError:
            raise
        except (ClientError, BotoCoreError) as exc:
            leaks = any(s in f"{exc}{exc!r}" for s in self._secrets)
            raise self.convert(exc, what) from (None if leaks else exc)

    def convert(self, exc: BaseException, what: str) -> TranscoderError:
        """The error to raise; S3's error code is kept as ``.code`` for the callers that expect one."""
        err = self._convert(exc, what)
        err.code = str(exc.response.get("Error", {}).get("Code", "")) if isinstance(exc, ClientError) else ""  # type: ignore[attr-defined]
        return err

    def _convert(self, exc: BaseException, what: str) -> TranscoderError:
        where = f"{self.location}: {what}"
        if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
            return AuthError(f"{where}: no AWS credentials found (environment, shared credentials file, profile=, "
                             "or access_key_id=/secret_access_key=)")
        if not isinstance(exc, ClientError):
            return TransientError(f"{where}: {type(exc).__name__} talking to S3")
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        if code == "NoSuchBucket":
            return SinkError(f"{self.location}: bucket {self.bucket!r} does not exist")
        if code in ("NoSuchKey", "404", "NotFound"):
            return NotFound(f"{where}: not found")
        if code in AUTH_CODES or status in (401, 403):
            return AuthError(f"{where}: access denied ({code or status}); check the AWS credentials and bucket policy")
        if status == 409:
            return Conflict(f"{where}: {code or 'conflict'} (409)")
        if code in TRANSIENT_CODES or status == 429 or status >= 500:
            return TransientError(f"{where}: {code or status}, retry later")
        return SinkError(f"{where}: {code or 'error'} ({status})")

    def head(self, key: str) -> int | None:
        try:
            with self.errors(f"stat {key}"):
                return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])
        except NotFound:
            return None

    def get(self, key: str, offset: int = 0, length: int | None = None, *,
            deadline: Deadline | None = None) -> BinaryIO:
        if length == 0:
            return self._empty(key)
        ranged = {"Range": f"bytes={offset}-" + ("" if length is None else str(offset + length - 1))} if offset or length else {}
        try:
            with self.errors(f"read {key}"):
                if deadline is None:
                    response = self.client.get_object(Bucket=self.bucket, Key=key, **ranged)
                else:  # the headers too must come within the deadline
                    response = call_within(deadline, lambda: self.client.get_object(Bucket=self.bucket, Key=key,
                                                                                    **ranged))
        except SinkError as exc:
            if _code(exc) != "InvalidRange":
                raise
            return self._empty(key)  # offset at or past the end
        body = response["Body"]
        if deadline is not None:
            deadline.attach(socket_of(body))
        reader = ObjectReader(body.read, body.close, int(response["ContentLength"]), f"{self.location}: read {key}",
                              lambda e: self.convert(e, f"read {key}"), deadline)
        return buffered(reader)

    def _empty(self, key: str) -> BinaryIO:
        if self.head(key) is None:
            raise NotFound(f"{self.location}: read {key}: not found")
        return io.BytesIO(b"")

    def put(self, key: str, data: bytes) -> bool:
        return self._create(f"write {key}", self.client.put_object, Bucket=self.bucket, Key=key, Body=data)

    def _create(self, what: str, call: Any, **kwargs: Any) -> bool:
        """A create-only request: True if created, False if the key existed (412, or 409 and now present)."""
        try:
            with self.errors(what):
                call(IfNoneMatch="*", **kwargs)
            return True
        except Conflict:
            # A concurrent conditional write to the same key (AWS answers 409 then).
            if self.head(kwargs["Key"]) is None:
                raise
            return False
        except SinkError as exc:
            if _code(exc) != "PreconditionFailed":
                raise
            return False

    def keys(self, prefix: str) -> Iterator[str]:
        with self.errors(f"list {prefix}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield str(item["Key"])

    def upload(self, key: str) -> _S3Upload:
        with self.errors(f"start upload {key}"):
            response = self.client.create_multipart_upload(Bucket=self.bucket, Key=key)
        return _S3Upload(self, key, response["UploadId"], response.get("ChecksumAlgorithm"))

    def copy(self, src: str, dst: str, size: int) -> bool:
        upload = self.upload(dst)
        ranges = [(start, min(size, start + COPY_PART) - 1) for start in range(0, size, COPY_PART)]
        try:
            with ThreadPoolExecutor(min(self._concurrency, len(ranges))) as pool:
                list(pool.map(lambda nr: upload.copy_part(nr[0], src, *nr[1]), enumerate(ranges, 1)))
            return upload.complete(len(ranges), if_absent=True)
        except BaseException:
            upload.abort()
            raise

    def delete(self, key: str) -> None:
        with self.errors(f"delete {key}"):
            self.client.delete_object(Bucket=self.bucket, Key=key)

    def leftovers(self, prefix: str) -> Iterator[Leftover]:
        ingest = f"{prefix}ingest/"
        with self.errors(f"list {ingest}"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=ingest):
                for item in page.get("Contents", []):
                    key = str(item["Key"])
                    yield Leftover("ingest object", key, int(item["Size"]), item["LastModified"].timestamp(),
                                   functools.partial(self.delete, key))
        with self.errors(f"list uploads under {prefix or '/'}"):
            pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=prefix)
            uploads = [u for page in pages for u in page.get("Uploads", [])]
        for found in uploads:
            upload = _S3Upload(self, str(found["Key"]), str(found["UploadId"]), None)
            size, modified = upload.progress(found["Initiated"].timestamp())
            yield Leftover("multipart upload", upload.key, size, modified, upload.abort)

    def close(self) -> None:
        self.client.close()


class _S3Upload:
    """One multipart upload; ``complete`` is create-only when asked."""

    def __init__(self, store: _S3Store, key: str, upload_id: str, checksum: str | None) -> None:
        self.store, self.key, self.upload_id, self.checksum = store, key, upload_id, checksum
        self.parts: dict[int, dict[str, Any]] = {}
        self._ids = {"Bucket": store.bucket, "Key": key, "UploadId": upload_id}

    def put_part(self, number: int, data: bytes) -> None:
        with self.store.errors(f"upload part {number} of {self.key}"):
            response = self.store.client.upload_part(PartNumber=number, Body=data, **self._ids)
        # Part checksums are repeated at completion only when the upload was created with one.
        extra = {k: v for k, v in response.items() if self.checksum and k == f"Checksum{self.checksum}"}
        self.parts[number] = {"ETag": response["ETag"], "PartNumber": number, **extra}

    def copy_part(self, number: int, src: str, first: int, last: int) -> None:
        with self.store.errors(f"copy {src} to {self.key}"):
            response = self.store.client.upload_part_copy(
                PartNumber=number, CopySource={"Bucket": self.store.bucket, "Key": src},
                CopySourceRange=f"bytes={first}-{last}", **self._ids)
        self.parts[number] = {"ETag": response["CopyPartResult"]["ETag"], "PartNumber": number}

    def complete(self, parts: int, *, if_absent: bool) -> bool:
        body = {"Parts": [self.parts[n] for n in range(1, parts + 1)]}
        call = self.store.client.complete_multipart_upload
        if if_absent:
            created = self.store._create(f"publish {self.key}", call, MultipartUpload=body, **self._ids)
            if not created:
                self.abort()
            return created
        with self.store.errors(f"finish upload {self.key}"):
            call(MultipartUpload=body, **self._ids)
        return True

    def progress(self, initiated: float) -> tuple[int, float]:
        """Bytes uploaded so far, and when the upload was last written to (a part, or its start)."""
        size, newest = 0, initiated
        with self.store.errors(f"list parts of {self.key}"):
            for page in self.store.client.get_paginator("list_parts").paginate(**self._ids):
                for part in page.get("Parts", []):
                    size += int(part.get("Size", 0))
                    newest = max(newest, part["LastModified"].timestamp())
        return size, newest

    def abort(self) -> None:
        try:
            with self.store.errors(f"abort upload {self.key}"):
                self.store.client.abort_multipart_upload(**self._ids)
        except NotFound:
            pass  # already completed or aborted
        except SinkError as exc:
            if _code(exc) != "NoSuchUpload":
                raise
