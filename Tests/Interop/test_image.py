"""scripts/image: the OCI archive is read by independent tools (skopeo, umoci), runs from its own unpacked rootfs
in a chroot, holds only what kekd needs, and is reproducible. The static release build happens once per module."""
import contextlib
import hashlib
import json
import os
import pathlib
import re
import shutil
import subprocess
import tarfile
import time

import pytest

from conftest import KEKCTL, ROOT, wait_for_socket

# The one place scripts/image names the uid.
IMAGE_UID = int(re.search(r"^IMAGE_UID=(\d+)", (ROOT / "scripts/image").read_text(), re.M).group(1))


def need(tool):
    path = shutil.which(tool)
    assert path, f"{tool} is needed for the image test: apt-get install -y skopeo umoci (as .ci/run does)"
    return path


def build_image(out: pathlib.Path) -> tuple[pathlib.Path, float]:
    started = time.monotonic()
    run = subprocess.run([str(ROOT / "scripts/image"), str(out)], cwd=ROOT, capture_output=True, text=True, timeout=3600)
    assert run.returncode == 0, run.stderr[-4000:]
    assert run.stdout.strip().splitlines()[-1] == str(out), "the last line of output must be the archive's path"
    return out, time.monotonic() - started


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """The archive, its OCI layout and the rootfs umoci unpacked from it."""
    need("skopeo")
    need("umoci")
    work = tmp_path_factory.mktemp("image")
    archive, seconds = build_image(work / "kekd.oci.tar")
    print(f"scripts/image took {seconds:.1f}s")
    layout = work / "layout"
    layout.mkdir()
    with tarfile.open(archive) as t:
        t.extractall(layout, filter="data")
    index = json.loads((layout / "index.json").read_text())
    tag = index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"]
    bundle = work / "bundle"
    unpack = subprocess.run([need("umoci"), "unpack", "--image", f"{layout}:{tag}", str(bundle)], capture_output=True, text=True)
    assert unpack.returncode == 0, unpack.stderr
    return {"archive": archive, "layout": layout, "rootfs": bundle / "rootfs", "tag": tag, "work": work}


@contextlib.contextmanager
def proc_mounted(rootfs: pathlib.Path):
    """/proc inside the chroot, as a container runtime provides it (Swift reads its arguments from /proc/self)."""
    (rootfs / "proc").mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "proc", "proc", str(rootfs / "proc")], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(rootfs / "proc")], check=True)
        (rootfs / "proc").rmdir()


def version():
    return subprocess.run([str(KEKCTL), "--version"], capture_output=True, text=True, check=True).stdout.split()[1]


def test_skopeo_reads_the_archive(image):
    inspect = subprocess.run([need("skopeo"), "inspect", f"oci-archive:{image['archive']}"], capture_output=True, text=True)
    assert inspect.returncode == 0, inspect.stderr
    info = json.loads(inspect.stdout)
    assert info["Os"] == "linux" and info["Architecture"] in ("amd64", "arm64")
    assert info["Labels"]["org.opencontainers.image.version"] == version()
    assert info["Labels"]["org.opencontainers.image.source"]
    assert len(info["Layers"]) == 1
    config = json.loads(subprocess.run([need("skopeo"), "inspect", "--config", f"oci-archive:{image['archive']}"],
                                       capture_output=True, text=True, check=True).stdout)["config"]
    assert config["User"] == f"{IMAGE_UID}:{IMAGE_UID}"
    assert config["Entrypoint"] == ["/usr/local/bin/kekd", "serve"]
    assert "PATH=/usr/local/bin" in config["Env"]
    assert image["tag"] == version()


def test_unpacked_binaries_run_in_a_chroot(image):
    rootfs = image["rootfs"]
    with proc_mounted(rootfs):
        for binary in ("kekd", "kekctl"):
            run = subprocess.run(["chroot", str(rootfs), f"/usr/local/bin/{binary}", "--version"], capture_output=True, text=True)
            assert run.returncode == 0, run.stderr
            assert run.stdout.strip() == f"{binary} {version()}"


def test_kekd_serves_from_the_image_as_its_uid(image):
    """kekctl init and kekd serve inside the image's rootfs as the image's uid; Status answers to the host's kekctl."""
    rootfs = image["rootfs"]
    data = rootfs / "data"
    data.mkdir(mode=0o700)
    os.chown(data, IMAGE_UID, IMAGE_UID)
    chroot = ["chroot", f"--userspec={IMAGE_UID}:{IMAGE_UID}", str(rootfs)]
    with proc_mounted(rootfs):
        subprocess.run(chroot + ["/usr/local/bin/kekctl", "init", "--key-file", "/data/kek.json"], check=True, capture_output=True)
        proc = subprocess.Popen(chroot + ["/usr/local/bin/kekd", "serve", "--listen", "unix:///data/kekd.sock",
                                          "--key-file", "/data/kek.json", "--state-dir", "/data", "--health-addr", "off"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            wait_for_socket(str(data / "kekd.sock"), proc)
            status = subprocess.run([str(KEKCTL), "status", "--socket", str(data / "kekd.sock"), "--json"],
                                    capture_output=True, text=True, timeout=30)
            assert status.returncode == 0, status.stderr
            assert json.loads(status.stdout)["healthz"] == "ok"
            # Encrypt goes through OpenSSL's AES-GCM and the audit log, all from the image's own libraries.
            encrypt = subprocess.run([str(KEKCTL), "encrypt", "--socket", str(data / "kekd.sock")], input=b"hello",
                                     capture_output=True, timeout=30)
            assert encrypt.returncode == 0, encrypt.stderr
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    assert proc.returncode == 0, proc.stderr.read().decode(errors="replace")[-2000:]


def test_image_holds_only_what_kekd_needs(image):
    rootfs = image["rootfs"]
    files = sorted(str(p.relative_to(rootfs)) for p in rootfs.rglob("*") if not p.is_dir() and "data" != p.parts[len(rootfs.parts)])
    print("image files:\n" + "\n".join(files))
    libraries = set()
    for binary in ("kekd", "kekctl"):
        ldd = subprocess.run(["ldd", str(rootfs / "usr/local/bin" / binary)], capture_output=True, text=True, check=True).stdout
        for line in ldd.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "=>" and parts[2].startswith("/"):
                libraries.add(parts[2].lstrip("/"))
            elif parts and parts[0].startswith("/"):
                libraries.add(parts[0].lstrip("/"))
    expected = {"usr/local/bin/kekd", "usr/local/bin/kekctl", "etc/passwd", "etc/group", "etc/nsswitch.conf",
                "etc/ssl/certs/ca-certificates.crt"} | libraries
    assert set(files) == expected
    assert any("libssl.so" in f for f in files) and any("libc.so" in f for f in files)
    for absent in ("bin/sh", "usr/bin/sh", "bin/bash", "usr/bin/apt", "usr/bin/dpkg", "var/lib/dpkg"):
        assert not (rootfs / absent).exists(), absent
    passwd = (rootfs / "etc/passwd").read_text()
    assert f"kekd:x:{IMAGE_UID}:{IMAGE_UID}:" in passwd


def test_layer_is_reproducible(image):
    """Numeric root ownership and a fixed mtime in the layer; a second build gives the same archive, byte for byte."""
    index = json.loads((image["layout"] / "index.json").read_text())
    manifest_digest = index["manifests"][0]["digest"].split(":")[1]
    manifest = json.loads((image["layout"] / "blobs/sha256" / manifest_digest).read_text())
    for blob in [manifest["config"]] + manifest["layers"]:
        data = (image["layout"] / "blobs/sha256" / blob["digest"].split(":")[1]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == blob["digest"].split(":")[1] and len(data) == blob["size"]
    layer = image["layout"] / "blobs/sha256" / manifest["layers"][0]["digest"].split(":")[1]
    with tarfile.open(layer) as t:
        for member in t.getmembers():
            assert (member.uid, member.gid, member.mtime) == (0, 0, 0), member.name
    again, seconds = build_image(image["work"] / "again.oci.tar")
    print(f"second scripts/image (build up to date) took {seconds:.1f}s")
    assert hashlib.sha256(again.read_bytes()).hexdigest() == hashlib.sha256(image["archive"].read_bytes()).hexdigest()
