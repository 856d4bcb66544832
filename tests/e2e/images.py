"""The e2e node cluster's dockerd and its images, none of which can be pulled here.

- a stand-in for ``python:3.11-slim-bookworm`` from Debian's packages (debootstrap
  --variant=minbase, ``docker import``, a layer making a venv on PATH);
- the pause image: ``pause.c`` beside this file, ``gcc -static``, ``docker import``;
- the project's image: ``images/Dockerfile`` built exactly as users build it, on that base.

All are cached in the dockerd's data root and rebuilt only when their recipe changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.e2e.daemons import (
    REPO_ROOT,
    ClusterStartError,
    Layout,
    Timeouts,
    docker_command,
    log_tail,
    read_pidfile,
    run,
    shared_dir,
    spawn,
    unmount_under,
    wait_until,
)

BRIDGE_IP = "172.17.0.1"  # docker0: the node's address, the API server's and the DNS's
PAUSE_IMAGE = "k8s.gcr.io/pause:3.2"
ROOTFS_IMAGE = "fl-kubeflow-e2e/debian-rootfs:bookworm"
BASE_IMAGE = "fl-kubeflow-e2e/python:3.11-slim-bookworm"
IMAGE_REPOSITORY = "fl-kubeflow"
KEEP_IMAGES = 3  # project images kept beside the current one (worktrees sharing the cluster)
DEBIAN_SUITE = "bookworm"

# python3-venv brings ensurepip (pip without a download); passwd gives useradd, as
# debian:bookworm-slim has it.
DEBOOTSTRAP_INCLUDE = "python3,python3-venv,ca-certificates,passwd"

# The stand-in's Python: a venv first on PATH, so `python`/`pip` exist as in the official image
# and Debian's PEP 668 block on the system Python does not apply.
BASE_DOCKERFILE = """\
FROM {rootfs}
LABEL fl-kubeflow.e2e.recipe={recipe}
RUN python3 -m venv /usr/local/python && /usr/local/python/bin/python -m pip --version
ENV PATH=/usr/local/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \\
    LANG=C.UTF-8
CMD ["python3"]
"""

# What debootstrap leaves that debian:bookworm-slim does not ship (downloaded .debs, apt lists,
# docs): 275 MB of rootfs down to 133 MB.
ROOTFS_PRUNE = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/locale",
                "usr/share/man")  # fmt: skip


def start_dockerd(layout: Layout, timeouts: Timeouts, die_with_parent: bool) -> None:
    """A dockerd of our own; runc-nooom as default runtime (no CAP_SYS_RESOURCE here)."""
    if read_pidfile(layout, "dockerd") is not None:
        return
    for folder in (layout.docker_data, layout.run):
        folder.mkdir(parents=True, exist_ok=True)
    spawn(
        layout,
        "dockerd",
        [
            shutil.which("dockerd") or "dockerd",
            "--data-root", str(layout.docker_data),
            "--exec-root", str(layout.run / "docker-exec"),
            "--pidfile", str(layout.run / "dockerd.self.pid"),
            "--host", f"unix://{layout.docker_sock}",
            "--bip", f"{BRIDGE_IP}/16",
            "--storage-driver", "overlay2",
            "--exec-opt", "native.cgroupdriver=cgroupfs",
            "--add-runtime", f"runc-nooom={shared_dir() / 'runc-nooom'}",
            "--default-runtime", "runc-nooom",
        ],
        die_with_parent,
    )  # fmt: skip
    docker = docker_command(layout)
    wait_until(
        "waiting for dockerd",
        lambda: run([*docker, "version"], timeout=10).returncode == 0,
        timeouts.docker,
        layout,
        ["dockerd"],
    )


def _image_label(layout: Layout, image: str, label: str) -> str | None:
    """The image's label value, or None when the image does not exist."""
    template = '{{ index .Config.Labels "' + label + '" }}'
    result = run([*docker_command(layout), "image", "inspect", "-f", template, image], 60)
    return result.stdout.strip() if result.returncode == 0 else None


def _debian_mirror() -> str:
    """``FL_E2E_DEBIAN_MIRROR``, else the first URI of the host's apt sources (its proxy)."""
    if os.environ.get("FL_E2E_DEBIAN_MIRROR"):
        return os.environ["FL_E2E_DEBIAN_MIRROR"]
    deb822 = Path("/etc/apt/sources.list.d/debian.sources")
    with contextlib.suppress(OSError):
        for line in deb822.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    with contextlib.suppress(OSError):
        for line in Path("/etc/apt/sources.list").read_text().splitlines():
            parts = line.split()
            if parts[:1] == ["deb"] and "security" not in line:
                return next(p for p in parts[1:] if not p.startswith("["))
    return "http://deb.debian.org/debian"


def ensure_base_image(layout: Layout, timeouts: Timeouts) -> bool:
    """Build the stand-in for python:3.11-slim-bookworm unless present; True if it built."""
    recipe = hashlib.sha256(
        f"{DEBIAN_SUITE} {DEBOOTSTRAP_INCLUDE} {ROOTFS_PRUNE} {BASE_DOCKERFILE}".encode()
    ).hexdigest()[:16]
    if _image_label(layout, BASE_IMAGE, "fl-kubeflow.e2e.recipe") == recipe:
        return False
    docker = docker_command(layout)
    rootfs = layout.cache / "rootfs"
    unmount_under(rootfs)  # an interrupted debootstrap leaves /proc mounted inside
    shutil.rmtree(rootfs, ignore_errors=True)
    rootfs.mkdir(parents=True)
    with layout.log("debootstrap").open("wb") as log_file:
        result = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={DEBOOTSTRAP_INCLUDE}",
             DEBIAN_SUITE, str(rootfs), _debian_mirror()],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            timeout=timeouts.debootstrap, check=False,
        )  # fmt: skip
    if result.returncode != 0:
        raise ClusterStartError(
            f"debootstrap failed ({result.returncode}); {layout.log('debootstrap')} ends:\n"
            + log_tail(layout, "debootstrap")
        )
    for relative in ROOTFS_PRUNE:
        target = rootfs / relative
        if target.is_dir():
            for child in target.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    imported = run([*docker, "import", "-", ROOTFS_IMAGE], timeouts.image_build, stdin=tar.stdout)
    tar.wait(timeout=timeouts.stop)
    if imported.returncode != 0 or tar.returncode != 0:
        raise ClusterStartError(f"docker import of the rootfs failed: {imported.stderr}")
    shutil.rmtree(rootfs, ignore_errors=True)
    built = run(
        [*docker, "build", "-t", BASE_IMAGE, "-"],
        timeouts.image_build,
        input=BASE_DOCKERFILE.format(rootfs=ROOTFS_IMAGE, recipe=recipe),
        env={**os.environ, "DOCKER_BUILDKIT": "1"},
    )
    if built.returncode != 0:
        raise ClusterStartError(f"building {BASE_IMAGE} failed:\n{built.stderr[-4000:]}")
    return True


def ensure_pause_image(layout: Layout, timeouts: Timeouts) -> bool:
    """gcc -static of pause.c, imported as the kubelet's infra image; True if it built."""
    source = Path(__file__).with_name("pause.c")
    recipe = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    if _image_label(layout, PAUSE_IMAGE, "fl-kubeflow.e2e.recipe") == recipe:
        return False
    with tempfile.TemporaryDirectory(prefix="fl-e2e-pause-") as scratch:
        binary = Path(scratch) / "pause"
        compiled = run(["gcc", "-static", "-O2", "-o", str(binary), str(source)], 300)
        if compiled.returncode != 0:
            raise ClusterStartError(f"gcc -static pause.c failed:\n{compiled.stderr}")
        archive = io.BytesIO()
        with tarfile.open(fileobj=archive, mode="w") as tar:
            tar.add(binary, arcname="pause")
        imported = subprocess.run(
            [*docker_command(layout), "import",
             "--change", 'ENTRYPOINT ["/pause"]',
             "--change", f"LABEL fl-kubeflow.e2e.recipe={recipe}",
             "-", PAUSE_IMAGE],
            input=archive.getvalue(), capture_output=True, timeout=timeouts.image_build,
            check=False,
        )  # fmt: skip
        if imported.returncode != 0:
            raise ClusterStartError(f"docker import of pause failed: {imported.stderr!r}")
    return True


def _image_inputs(repo: Path) -> Iterator[Path]:
    """The files images/Dockerfile reads (what its .dockerignore keeps)."""
    yield repo / "images" / "Dockerfile"
    yield repo / "pyproject.toml"
    yield repo / "setup.py"
    yield repo / "README.md"
    sources = (repo / "src", repo / "components", repo / "pipeline")
    for path in sorted(p for folder in sources for p in folder.rglob("*")):
        parts = set(path.parts)
        if (
            path.is_file()
            and "__pycache__" not in parts
            and not any(part.endswith(".egg-info") for part in path.parts)
        ):
            yield path


def image_tag(layout: Layout, repo: Path = REPO_ROOT) -> str:
    """A tag naming exactly these sources on this base, so worktrees sharing the cluster's
    dockerd never overwrite each other's image, and an unchanged tree is never rebuilt."""
    digest = hashlib.sha256()
    base_id = run([*docker_command(layout), "image", "inspect", "-f", "{{.Id}}", BASE_IMAGE], 60)
    digest.update(base_id.stdout.strip().encode())
    for path in _image_inputs(repo):
        digest.update(str(path.relative_to(repo)).encode() + b"\0" + path.read_bytes() + b"\0")
    # Not "latest": the kubelet pulls :latest always, and no pull can succeed here.
    return f"{IMAGE_REPOSITORY}:e2e-{digest.hexdigest()[:12]}"


def build_project_image(
    layout: Layout, timeouts: Timeouts, repo: Path = REPO_ROOT
) -> tuple[str, bool]:
    """Build images/Dockerfile as users do, on the stand-in base; return (tag, built?).

    pip in the build trusts this network's CA bundle through the Dockerfile's ``cacerts``
    build secret (``FL_E2E_CA_CERTS``, default the host's bundle) and takes an optional
    pip.conf through ``pipconf`` (``FL_E2E_PIP_CONF``): the host's own pip.conf points at
    file:// mirrors that do not exist inside a build.
    """
    tag = image_tag(layout, repo)
    if run([*docker_command(layout), "image", "inspect", tag], 60).returncode == 0:
        return tag, False
    args = [*docker_command(layout), "build", "--progress=plain", "-f",
            str(repo / "images" / "Dockerfile"), "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}",
            "-t", tag]  # fmt: skip
    ca = os.environ.get("FL_E2E_CA_CERTS", "/etc/ssl/certs/ca-certificates.crt")
    if ca and Path(ca).is_file():
        args += ["--secret", f"id=cacerts,src={ca}"]
    pip_conf = os.environ.get("FL_E2E_PIP_CONF")
    if pip_conf:
        args += ["--secret", f"id=pipconf,src={pip_conf}"]
    with layout.log("image-build").open("wb") as log_file:
        result = subprocess.run(
            [*args, str(repo)], stdin=subprocess.DEVNULL, stdout=log_file,
            stderr=subprocess.STDOUT, timeout=timeouts.image_build, check=False,
            env={**os.environ, "DOCKER_BUILDKIT": "1"},
        )  # fmt: skip
    if result.returncode != 0:
        raise ClusterStartError(
            f"docker build of images/Dockerfile failed ({result.returncode}); "
            f"{layout.log('image-build')} ends:\n" + log_tail(layout, "image-build", 40)
        )
    _prune_project_images(layout, keep=tag)
    return tag, True


def _prune_project_images(layout: Layout, keep: str, newest: int = KEEP_IMAGES) -> None:
    """Untag all but the ``newest`` project images (and ``keep``), so the cache does not grow
    by an image per dependency change. Without --force: an image a container uses stays."""
    listing = run(
        [
            *docker_command(layout),
            "images",
            IMAGE_REPOSITORY,
            "--format",
            "{{.Repository}}:{{.Tag}}",
        ],
        60,
    ).stdout.split()  # newest first
    stale = [t for t in listing if t.split(":")[-1].startswith("e2e-") and t != keep][newest:]
    if stale:
        run([*docker_command(layout), "rmi", *stale], 300)
