"""kekd's small trusted base (issue 12): no module links full Foundation, FoundationInternationalization or ICU, so
their ~10 MiB of mapped code and data never come back unnoticed. Checked three ways: the dynamic build's `ldd`, the
libraries a running kekd has mapped, and the symbols of the static release build that ships (the same build as
scripts/bench and scripts/image, in .build-static)."""
import os
import re
import subprocess
import time

import pytest

from conftest import KEKCTL, KEKD, ROOT

# Shared objects of full Foundation and ICU, as the toolchain names them.
FORBIDDEN_LIBRARIES = re.compile(r"lib(Foundation|FoundationInternationalization|FoundationNetworking|FoundationXML|"
                                 r"_FoundationICU|icu\w*)\.so")
# In a static binary: Swift symbols of module Foundation (mangled `$s10Foundation`), FoundationInternationalization,
# ICU's renamed C API (`swift_ucol_open` ...) and its data blob (`icudt76_dat`).
FORBIDDEN_SYMBOLS = re.compile(r"\$s10Foundation|FoundationInternationalization|\bswift_u[a-z]+_|\bicudt\d+")


@pytest.mark.parametrize("binary", [KEKD, KEKCTL], ids=["kekd", "kekctl"])
def test_dynamic_build_links_no_foundation_or_icu(binary):
    out = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=True).stdout
    assert "libFoundationEssentials.so" in out, "expected FoundationEssentials (the check would be vacuous otherwise)"
    bad = [line.strip() for line in out.splitlines() if FORBIDDEN_LIBRARIES.search(line)]
    assert not bad, f"{binary.name} links {bad}"


def test_running_kekd_maps_no_foundation_or_icu(kekd_factory):
    k = kekd_factory()
    with open(f"/proc/{k.proc.pid}/maps") as f:
        mapped = {line.split()[-1] for line in f if "/" in line}
    assert any("libFoundationEssentials.so" in m for m in mapped)
    bad = sorted(m for m in mapped if FORBIDDEN_LIBRARIES.search(m))
    assert not bad, f"kekd mapped {bad}"


def static_release_bin_dir():
    """The static release build that ships (built if needed), as scripts/bench and scripts/image build it."""
    cmd = ["swift", "build", "-c", "release", "--static-swift-stdlib", "--scratch-path", str(ROOT / ".build-static")]
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return subprocess.run(cmd + ["--show-bin-path"], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def test_static_release_binaries_hold_no_foundation_or_icu_symbols():
    bindir = static_release_bin_dir()
    for name in ("kekd", "kekctl"):
        path = os.path.join(bindir, name)
        symbols = subprocess.run(["nm", path], capture_output=True, text=True, check=True).stdout
        assert "$s20FoundationEssentials" in symbols, f"{name}: no FoundationEssentials symbols (stripped binary?)"
        bad = sorted({m.group(0) for m in FORBIDDEN_SYMBOLS.finditer(symbols)})
        assert not bad, f"static {name} carries {bad[:10]}"
        # No dynamic dependency on the toolchain's libraries either (the runtime is linked in).
        needed = subprocess.run(["ldd", path], capture_output=True, text=True, check=True).stdout
        assert "libswiftCore" not in needed and not FORBIDDEN_LIBRARIES.search(needed), needed


def code_mapping(pid, binary):
    """(resident KiB, size KiB) of `binary`'s executable mapping in process `pid`."""
    rss = size = 0
    inside = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
                inside = fields[1] == "r-xp" and fields[-1] == os.path.realpath(binary)
            elif inside and fields[0] == "Size:":
                size += int(fields[1])
            elif inside and fields[0] == "Rss:":
                rss += int(fields[1])
    return rss, size


def test_start_up_code_leaves_the_resident_set(tmp_path):
    """kekd drops its code mappings once start-up is done; left mapped, the start-up code the kernel faulted in stays
    resident for the life of the process (about 3/4 of the static release build's 10 MB of code). The build that
    ships, idle: no client connects (serving faults its own code back in)."""
    bindir = static_release_bin_dir()
    kekd = os.path.join(bindir, "kekd")
    key_file, sock = str(tmp_path / "kek.json"), str(tmp_path / "kekd.sock")
    subprocess.run([os.path.join(bindir, "kekctl"), "init", "--key-file", key_file], check=True, capture_output=True)
    proc = subprocess.Popen([kekd, "serve", "--listen", f"unix://{sock}", "--key-file", key_file, "--state-dir",
                             str(tmp_path), "--health-addr", "off", "--log-level", "warn"])
    try:
        deadline = time.monotonic() + 10
        while not os.path.exists(sock) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None and os.path.exists(sock), "kekd did not start"
        while True:
            rss, size = code_mapping(proc.pid, kekd)
            assert size > 0, "kekd's code mapping not found"
            if rss < size / 2 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert rss < size / 2, f"{rss} of kekd's {size} KiB of code still resident after start-up"
    finally:
        proc.terminate()
        proc.wait()
