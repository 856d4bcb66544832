"""KFP's artifact store (the S3-compatible MinIO/SeaweedFS behind Kubeflow Pipelines).

KFP 2.17 writes output artifacts to the pipeline root, by default
``minio://mlpipeline/v2/artifacts``: ``minio://`` is S3 served in-cluster at
``seaweedfs.kubeflow:9000`` (MinIO at ``minio-service.kubeflow:9000`` before 2.15), with
the credentials of the ``mlpipeline-minio-artifact`` Secret (keys ``accesskey`` and
``secretkey``), which multi-user Kubeflow copies into every profile namespace.

:class:`ArtifactStore` holds an endpoint and credentials, taken from that Secret or from
the standard AWS variables, and lists and downloads artifacts with s3fs. Credentials are
never a function's plain argument in a notebook cell: build the store from the Secret or
the environment.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kubernetes.client import CoreV1Api

DEFAULT_ENDPOINT = "http://seaweedfs.kubeflow:9000"
DEFAULT_SECRET = "mlpipeline-minio-artifact"
ACCESS_KEY_KEY = "accesskey"
SECRET_KEY_KEY = "secretkey"
DEFAULT_REGION = "us-east-1"
DEFAULT_TIMEOUT = 30.0  # seconds per request; a wedged store fails a call, not hangs it
# URI schemes of S3-compatible stores: KFP's minio:// is plain S3 at the in-cluster endpoint.
S3_SCHEMES = ("s3", "minio")


class ArtifactStoreError(RuntimeError):
    """An artifact could not be listed or downloaded; the message names the URI and why."""


def split_uri(uri: str) -> tuple[str, str]:
    """``(bucket, key)`` of an ``s3://`` or ``minio://`` URI (the key without slashes around).

    Args:
        uri: e.g. ``minio://mlpipeline/v2/artifacts/fl-kubeflow/<run id>/...``.
    """
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in S3_SCHEMES:
        raise ArtifactStoreError(
            f"{uri!r}: not an S3 URI (expected one of {', '.join(s + '://' for s in S3_SCHEMES)})"
        )
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ArtifactStoreError(f"{uri!r}: no bucket")
    return bucket, key.strip("/")


@dataclass(frozen=True)
class ArtifactStore:
    """An S3-compatible endpoint and the credentials to read KFP's artifacts from it.

    Attributes:
        endpoint_url: e.g. ``http://seaweedfs.kubeflow:9000`` (in-cluster KFP 2.17).
        access_key: The S3 access key id.
        secret_key: The S3 secret key (never shown in the repr).
        region: The S3 region; MinIO and SeaweedFS accept any.
        timeout: Seconds a connection or a read may take before the call fails.
    """

    endpoint_url: str
    access_key: str
    secret_key: str = field(repr=False)
    region: str = DEFAULT_REGION
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, endpoint_url: str | None = None
    ) -> ArtifactStore:
        """The store named by the standard AWS variables.

        ``AWS_ACCESS_KEY_ID`` and ``AWS_SECRET_ACCESS_KEY`` are required; the endpoint is
        ``endpoint_url``, else ``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``, else
        KFP's in-cluster default.

        Args:
            environ: Variables to read (default: this process's environment).
            endpoint_url: Endpoint overriding the variables.
        """
        env = os.environ if environ is None else environ
        missing = [n for n in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if not env.get(n)]
        if missing:
            raise ArtifactStoreError(
                f"no artifact-store credentials: {' and '.join(missing)} not set "
                f"(or use ArtifactStore.from_secret() for KFP's {DEFAULT_SECRET} Secret)"
            )
        endpoint = (
            endpoint_url
            or env.get("AWS_ENDPOINT_URL_S3")
            or env.get("AWS_ENDPOINT_URL")
            or DEFAULT_ENDPOINT
        )
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
        return cls(endpoint, env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], region)

    @classmethod
    def from_secret(
        cls,
        namespace: str | None = None,
        name: str = DEFAULT_SECRET,
        endpoint_url: str = DEFAULT_ENDPOINT,
        core_v1_api: CoreV1Api | None = None,
    ) -> ArtifactStore:
        """The store whose credentials are in a Kubernetes Secret (KFP's, by default).

        Args:
            namespace: The Secret's namespace; default: this pod's (a Kubeflow notebook's
                profile namespace).
            name: The Secret, with the keys ``accesskey`` and ``secretkey``.
            endpoint_url: The S3 endpoint the credentials are for.
            core_v1_api: A Kubernetes client; default: the pod's service account, else the
                current kubeconfig context.
        """
        from fl_kubeflow_kfp.kube_reads import pod_namespace, read_object

        found = pod_namespace(namespace)
        if found is None:
            raise ArtifactStoreError(
                f"not in a pod: pass the namespace of the {name} Secret (e.g. your profile's)"
            )
        namespace = found
        secret = read_object(
            lambda api: api.read_namespaced_secret(name, found), "secrets", found, core_v1_api
        )
        if secret is None:
            raise ArtifactStoreError(f"Secret {namespace}/{name} not found")
        data = secret.data or {}
        missing = [key for key in (ACCESS_KEY_KEY, SECRET_KEY_KEY) if not data.get(key)]
        if missing:
            raise ArtifactStoreError(f"Secret {namespace}/{name} has no {' or '.join(missing)}")
        access, secret_key = (
            base64.b64decode(data[key]).decode("utf-8") for key in (ACCESS_KEY_KEY, SECRET_KEY_KEY)
        )
        return cls(endpoint_url, access, secret_key)

    def filesystem(self) -> Any:
        """A fresh ``s3fs.S3FileSystem`` for this endpoint (no instance cache, one attempt)."""
        import s3fs

        return s3fs.S3FileSystem(
            key=self.access_key,
            secret=self.secret_key,
            skip_instance_cache=True,
            client_kwargs={"endpoint_url": self.endpoint_url, "region_name": self.region},
            config_kwargs={
                "connect_timeout": self.timeout,
                "read_timeout": self.timeout,
                "retries": {"max_attempts": 2},
            },
        )

    def list_files(self, uri: str) -> list[str]:
        """Every object under ``uri`` as ``bucket/key`` paths, sorted (empty if none).

        Args:
            uri: An ``s3://`` or ``minio://`` prefix.
        """
        bucket, key = split_uri(uri)
        prefix = f"{bucket}/{key}".rstrip("/")
        try:
            return sorted(self.filesystem().find(prefix))
        except FileNotFoundError:
            return []
        except PermissionError as exc:
            message = f"{uri}: access denied at {self.endpoint_url}: {exc}"
            raise ArtifactStoreError(message) from exc
        except OSError as exc:
            message = f"{uri}: listing failed at {self.endpoint_url}: {exc}"
            raise ArtifactStoreError(message) from exc

    def modified(self, path: str) -> float:
        """When the object at ``path`` (``bucket/key``, as ``list_files`` gives) was written.

        Args:
            path: An object's ``bucket/key``.
        """
        try:
            stamp = self.filesystem().info(path).get("LastModified")
        except OSError as exc:
            message = f"{path}: no information at {self.endpoint_url}: {exc}"
            raise ArtifactStoreError(message) from exc
        return stamp.timestamp() if stamp is not None else 0.0

    def download(self, uri: str, destination: str | os.PathLike[str]) -> Path:
        """Copy the artifact at ``uri`` (a folder of objects, or one object) into a folder.

        Args:
            uri: An ``s3://`` or ``minio://`` URI, as KFP records for an output artifact.
            destination: Local folder to write into (created); the artifact's files land
                directly in it, keeping their relative paths.
        """
        bucket, key = split_uri(uri)
        prefix = f"{bucket}/{key}"
        target = Path(destination)
        target.mkdir(parents=True, exist_ok=True)
        files = self.list_files(uri)
        if not files:
            raise ArtifactStoreError(f"{uri}: no such artifact at {self.endpoint_url}")
        fs = self.filesystem()
        try:
            for path in files:
                relative = path[len(prefix) :].lstrip("/") or Path(path).name
                local = target / relative
                local.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(path, str(local))
        except OSError as exc:
            message = f"{uri}: download failed from {self.endpoint_url}: {exc}"
            raise ArtifactStoreError(message) from exc
        return target
