"""npm packages as data sources: found offline first, fetched with `npm pack` only when absent, licence-checked.

An importer names the package, the version it pins and the licence the package must carry; a package whose
licence file or package.json names another licence (or none) is refused before any of its files lands.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from imagegen_pipeline.datasets.idx import SourceNotFound
from imagegen_pipeline.paths import DataPaths

LICENSE_FILE = re.compile(r"^(licen[cs]e|copying)(\.(md|txt|markdown))?$", re.IGNORECASE)
# How licence texts name themselves; the ShareAlike and GNU patterns come before the ones they contain.
LICENSE_TEXTS = (
    ("CC-BY-SA-4.0", re.compile(r"Attribution[- ]ShareAlike|CC[- ]BY[- ]SA", re.IGNORECASE)),
    ("CC-BY-NC-4.0", re.compile(r"Attribution[- ]NonCommercial|CC[- ]BY[- ]NC", re.IGNORECASE)),
    ("CC-BY-4.0", re.compile(r"Creative Commons Attribution 4\.0|CC[- ]BY[- ]4\.0", re.IGNORECASE)),
    ("GPL", re.compile(r"GNU (Affero |Lesser )?General Public License", re.IGNORECASE)),
    ("Apache-2.0", re.compile(r"Apache License,?\s+Version 2\.0", re.IGNORECASE)),
    ("MIT", re.compile(r"\bMIT License\b|Permission is hereby granted, free of charge", re.IGNORECASE)),
    ("BSD", re.compile(r"Redistribution and use in source and binary forms", re.IGNORECASE)),
    ("OFL-1.1", re.compile(r"SIL Open Font License", re.IGNORECASE)),
)


class LicenseRefused(ValueError):
    """A package whose licence is missing or is not the one the importer was written for."""


@dataclass(frozen=True)
class NpmPackage:
    name: str  # "@lobehub/fluent-emoji-flat"
    version: str  # the pinned version `npm pack` fetches and the tarball name carries
    license: str  # SPDX id the package must name ("MIT", "Apache-2.0")

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def tarball(self) -> str:
        """The file name `npm pack` writes ("@scope/name" -> "scope-name-<version>.tgz")."""
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}.tgz"


class PackageFiles:
    """Files of an npm package from an installed folder or a `.tgz` tarball: the top-level ones (package.json,
    LICENSE) and those under `prefixes`."""

    def __init__(self, package: NpmPackage, location: Path, prefixes: tuple[str, ...]):
        self.package, self.location = package, location
        self.dir: Path | None = None
        self.files: dict[str, bytes] = {}
        if location.is_dir():
            self.dir = location
        else:
            with tarfile.open(location, "r:gz") as tar:
                for m in tar:
                    name = m.name.split("/", 1)[1] if "/" in m.name else m.name  # strip "package/"
                    if m.isfile() and (name.startswith(prefixes) or "/" not in name):
                        self.files[name] = tar.extractfile(m).read()
        meta = self.read("package.json")
        try:
            self.package_json = json.loads(meta) if meta else {}
        except ValueError:
            self.package_json = {}
        # a folder may hold another version than the pinned one: record what is really there
        self.version = str(self.package_json.get("version") or package.version)

    @property
    def spec(self) -> str:
        return f"{self.package.name}@{self.version}"

    def read(self, name: str) -> bytes | None:
        if name.startswith("/") or ".." in name.split("/"):
            return None  # names come from package metadata: never leave the package
        if self.dir is not None:
            p = self.dir / name
            return p.read_bytes() if p.is_file() else None
        return self.files.get(name)

    def names(self, prefix: str) -> list[str]:
        """Files directly under the folder `prefix` ("assets/"), sorted."""
        if self.dir is not None:
            folder = self.dir / prefix
            return sorted(prefix + p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
        return sorted(n for n in self.files if n.startswith(prefix) and "/" not in n[len(prefix):])

    def top_level(self) -> list[str]:
        if self.dir is not None:
            return sorted(p.name for p in self.dir.iterdir() if p.is_file())
        return sorted(n for n in self.files if "/" not in n)

    def license_file(self) -> tuple[str, bytes] | None:
        for n in self.top_level():
            if LICENSE_FILE.match(n):
                return n, self.read(n) or b""
        return None


def _is_package_dir(d: Path, package: NpmPackage) -> bool:
    try:
        return json.loads((d / "package.json").read_text(encoding="utf-8")).get("name") == package.name
    except (OSError, ValueError, AttributeError):
        return False


def locate(package: NpmPackage, paths: DataPaths, source: Path | None, *, accept_dir=None) -> Path:
    """The package's folder or tarball: under `source`, `node_modules/` or `data/downloads/` first; `npm pack`
    into `data/downloads/` only when none is there. `accept_dir(d)` also accepts a folder without package.json."""
    tgz = package.tarball
    candidates = []
    if source:
        candidates += [source / package.name, source / "node_modules" / package.name, source / tgz, source]
    candidates += [paths.home / "node_modules" / package.name, paths.downloads / tgz]
    for c in candidates:
        if c.is_dir() and (_is_package_dir(c, package) or (accept_dir is not None and accept_dir(c))):
            return c
        if c.is_file() and c.name == tgz:
            return c
    if shutil.which("npm"):
        paths.downloads.mkdir(parents=True, exist_ok=True)
        try:
            proc = subprocess.run(["npm", "pack", package.spec, "--pack-destination", str(paths.downloads)],
                                  capture_output=True, text=True, timeout=600)
            if proc.returncode == 0 and (paths.downloads / tgz).is_file():
                return paths.downloads / tgz
            reason = (proc.stderr.strip().splitlines() or ["npm pack failed"])[-1]
        except (OSError, subprocess.TimeoutExpired) as exc:
            reason = f"npm pack failed: {exc}"
    else:
        reason = "npm is not installed"
    raise SourceNotFound(f"{package.spec} not found ({reason}). Install it with `npm pack {package.spec}` into "
                         f"{paths.downloads}, or pass --source DIR")


def _spdx_ids(field, expected: str) -> set[str]:
    """The licence ids a package.json `license` field names ("MIT", {"type": "MIT"}, "(MIT OR Apache-2.0)": a
    choice that includes `expected` counts as `expected`)."""
    if isinstance(field, dict):
        field = field.get("type")
    if isinstance(field, list):  # the old `licenses: [{type}]` form
        return set().union(*(_spdx_ids(f, expected) for f in field)) if field else set()
    if not isinstance(field, str) or not field.strip():
        return set()
    tokens = [t for t in re.split(r"[()\s]+", field) if t]
    ids = {t for t in tokens if t not in ("OR", "AND")}
    return {expected} if expected in ids and "OR" in tokens and "AND" not in tokens else ids


def _text_ids(text: str) -> set[str]:
    return {spdx for spdx, pattern in LICENSE_TEXTS if pattern.search(text)}


def check_license(files: PackageFiles) -> str:
    """The licence `files` carries, as "MIT (package.json, LICENSE)"; LicenseRefused unless its licence file and
    package.json `license` field name the expected licence and nothing else."""
    expected, found, where = files.package.license, [], []
    pj = files.package_json.get("license", files.package_json.get("licenses"))
    if (ids := _spdx_ids(pj, expected)):
        found.append(f"package.json license {pj!r}")
        where.append(("package.json", ids))
    if (lic := files.license_file()) is not None:
        ids = _text_ids(lic[1][:200_000].decode("utf-8", "replace"))
        found.append(f"{lic[0]} naming {', '.join(sorted(ids))}" if ids else f"{lic[0]} naming no licence we know")
        if ids:
            where.append((lic[0], ids))
    head = f"refusing {files.spec} ({files.location}): expected the {expected} licence"
    if not where:
        raise LicenseRefused(f"{head}, found " + ("; ".join(found) if found else
                             "no licence file (LICENSE, LICENSE.md) and no package.json \"license\" field"))
    others = {i for _, ids in where for i in ids} - {expected}
    if others or any(expected not in ids for _, ids in where):
        raise LicenseRefused(f"{head}, found {'; '.join(found)}")
    return f"{expected} ({', '.join(w for w, _ in where)})"


def open_package(package: NpmPackage, paths: DataPaths, source: Path | None, prefixes: tuple[str, ...],
                 *, accept_dir=None) -> tuple[PackageFiles, str]:
    """Locate, read and licence-check one package: (its files, the licence it carries)."""
    files = PackageFiles(package, locate(package, paths, source, accept_dir=accept_dir), prefixes)
    return files, check_license(files)
