"""Offline wheelhouse for air-gapped GPU hosts (`coea wheelhouse`, docs/gpu.md).

One entry function, :func:`build_wheelhouse`, downloads with pip, on a machine that reaches an index, every
distribution coea needs on a GPU host of another Python / platform, into one folder::

    DIR/
      *.whl              wheels for the target (cp312, manylinux_2_28_x86_64 by default), coea's own included
      deepspeed-*.tar.gz packages that ship no wheel (SOURCE_ONLY), fetched as sdists and built at install time
      requirements.txt   name==version of every file in DIR
      MANIFEST.json      target, every file with sha256 and size, the pip command lines that ran

and the host installs from it with ``pip install --no-index --find-links DIR -r DIR/requirements.txt``.

The steps, in order (each a plain pip command line; ``--dry-run`` prints them instead):

1. sdist-only packages (deepspeed): ``pip download --no-deps --no-binary NAME``; their own requirements are read
   from the sdist's PKG-INFO and join step 3, with the build backend the host needs to build them.
2. torch from the CUDA index (``--torch-index``), with its CUDA runtime wheels.
3. everything else from the configured index, binary only, with torch pinned to the build saved by step 2.
4. coea's own wheel: ``pip wheel --no-deps`` of the source checkout.

Top-level requirements come from the installed distribution's metadata with their environment markers
evaluated for the *target*. pip evaluates the markers of transitive dependencies for the interpreter it runs
under (a pip limitation), so the exact set needs this command run by the target's Python version on Linux; a
warning says so otherwise.
"""

from __future__ import annotations

import collections
import email.parser
import hashlib
import importlib.metadata
import json
import logging
import platform as host_platform
import re
import shlex
import subprocess
import sys
import tarfile
import tomllib
import urllib.parse
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from packaging import tags
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    canonicalize_name,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import Version

from coea.config import ConfigError

log = logging.getLogger("coea.wheelhouse")

PROJECT = "coea"
DEFAULT_PYTHON = "3.12"
DEFAULT_PLATFORM = "manylinux_2_28_x86_64"
# The PyTorch index for CUDA 12.4 builds; pass --torch-index for the host's CUDA (e.g. .../whl/cu126).
DEFAULT_TORCH_INDEX = "https://download.pytorch.org/whl/cu124"
# Distributions that publish no wheel at all: fetched as sdists and built by pip on the host, with what their
# setup.py adds to the PKG-INFO list when it sees torch with CUDA (a --no-build-isolation build on the host).
SOURCE_ONLY = {"deepspeed": ("nvidia-ml-py",)}
# pip's PEP 517 fallback backend for a setup.py-only sdist; the host needs it in DIR to build offline.
LEGACY_BUILD_REQUIRES = ("setuptools>=40.8.0", "wheel")
OUTPUTS = ("requirements.txt", "MANIFEST.json")
TORCH_PIN_PLACEHOLDER = "torch==<version saved by the torch step>"

_PIP_OPTIONS = ("--disable-pip-version-check", "--progress-bar", "off")
_MANYLINUX = re.compile(r"^manylinux_(?P<major>\d+)_(?P<minor>\d+)_(?P<arch>\w+)$")
_LEGACY_MANYLINUX = {"manylinux2014": (2, 17), "manylinux2010": (2, 12), "manylinux1": (2, 5)}
# PEP 513 / 571 / 599: the architectures each legacy alias was defined for.
_LEGACY_ARCHES = {
    "manylinux2014": {"x86_64", "i686", "aarch64", "armv7l", "ppc64", "ppc64le", "s390x"},
    "manylinux2010": {"x86_64", "i686"},
    "manylinux1": {"x86_64", "i686"},
}
_OLDEST_GLIBC_MINOR = 5  # manylinux1 = glibc 2.5, the oldest tag a wheel can carry
_PIP_FAILED_FOR = (re.compile(r"No matching distribution found for (\S+)"),
                   re.compile(r"satisfies the requirement (\S+)"),
                   re.compile(r"Cannot install (\S+)"),
                   re.compile(r"[Ff]ailed to build (\S+)"))


class WheelhouseError(RuntimeError):
    """A pip run failed or the download folder is inconsistent (exit 1 from the CLI)."""


@dataclass(frozen=True)
class Target:
    """The interpreter and platform of the GPU host.

    Attributes:
        python: ``"3.12"``.
        platform: the platform the operator named, e.g. ``manylinux_2_28_x86_64``.
        platforms: every platform tag pip may accept for it, newest first (see :func:`_platform_tags`).
        arch: the machine architecture, e.g. ``x86_64``.
    """

    python: str
    platform: str
    platforms: tuple[str, ...]
    arch: str

    @property
    def abi(self) -> str:
        return "cp" + self.python.replace(".", "")

    @property
    def name(self) -> str:
        return f"{self.abi}-{self.platform}"

    def marker_environment(self) -> dict[str, str]:
        """PEP 508 marker variables of the target (CPython on Linux; the patch level is unknown, so ``.0``)."""
        full = f"{self.python}.0"
        return {
            "implementation_name": "cpython", "implementation_version": full, "os_name": "posix",
            "platform_machine": self.arch, "platform_python_implementation": "CPython", "platform_release": "",
            "platform_system": "Linux", "platform_version": "", "python_full_version": full,
            "python_version": self.python, "sys_platform": "linux",
        }

    def pip_flags(self) -> list[str]:
        flags = ["--only-binary=:all:"]
        for tag in self.platforms:
            flags += ["--platform", tag]
        return flags + ["--python-version", self.python, "--implementation", "cp", "--abi", self.abi]


@dataclass(frozen=True)
class PipStep:
    """One pip command line and what it is for (printed as a comment by ``--dry-run``)."""

    title: str
    argv: tuple[str, ...]

    def line(self) -> str:
        return shlex.join(self.argv)


@dataclass(frozen=True)
class WheelhouseResult:
    """What :func:`build_wheelhouse` did (or, with ``dry_run``, would do).

    Attributes:
        out: the wheelhouse folder.
        target: interpreter and platform of the GPU host.
        requirements: coea's top-level requirements for the target (markers evaluated, extras expanded).
        sdists: names fetched as sdists (built on the host at install time).
        steps: the pip command lines, in the order they ran (or would run).
        pins: the lines of requirements.txt (empty in a dry run).
        files: MANIFEST.json's file entries (empty in a dry run).
        install_command: the command for the air-gapped host.
        dry_run: nothing was run or written.
    """

    out: Path
    target: Target
    requirements: tuple[str, ...]
    sdists: tuple[str, ...]
    steps: tuple[PipStep, ...]
    pins: tuple[str, ...] = ()
    files: tuple[dict, ...] = ()
    install_command: str = ""
    dry_run: bool = False

    def report(self) -> list[str]:
        """The command's stdout lines.

        A dry run gives the pip command lines, each under a ``#`` comment saying what it is for; a real run
        gives what was saved, the sdists among it, and the install command for the host.
        """
        if self.dry_run:
            head = [f"# wheelhouse for {self.target.name} (dry run: nothing is downloaded)"]
            body = [line for i, s in enumerate(self.steps, 1) for line in (f"# {i}. {s.title}", s.line())]
            return head + body + ["# then, on the air-gapped host:", f"# {self.install_command}"]
        size = sum(f["size"] for f in self.files) / 2**20
        lines = [f"wheelhouse {self.out}: {len(self.files)} files, {size:.1f} MiB for {self.target.name}"]
        sdists = [f["file"] for f in self.files if f["kind"] == "sdist"]
        if sdists:
            lines.append(f"sdists (no wheel published; pip builds them on the host at install): {', '.join(sdists)}")
        return lines + ["install on the air-gapped host with:", f"  {self.install_command}"]


@dataclass(frozen=True)
class ProjectMetadata:
    """The parts of an installed distribution's metadata the wheelhouse reads."""

    name: str
    version: str
    requires: tuple[str, ...]
    extras: tuple[str, ...]
    requires_python: str = ""


@dataclass(frozen=True)
class PipRun:
    """Exit status and the last lines of one pip run's output (stdout and stderr together)."""

    returncode: int
    output: str = ""


@dataclass
class _Plan:
    """Requirements split by where they come from; filled in step by step."""

    wheels: list[Requirement]
    torch: Requirement | None
    sources: list[Requirement]
    steps: list[PipStep] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ entry point


def build_wheelhouse(out: str | Path, *, python: str = DEFAULT_PYTHON, platform: str = DEFAULT_PLATFORM,
                     torch_index: str = DEFAULT_TORCH_INDEX, extras: Sequence[str] = (), dry_run: bool = False,
                     include_project: bool = True) -> WheelhouseResult:
    """Download every wheel coea needs on a GPU host into ``out`` and write requirements.txt and MANIFEST.json.

    Args:
        out: wheelhouse folder (created; files already there are kept, so a rerun resumes a failed download).
        python: the host's Python, ``MAJOR.MINOR``.
        platform: the host's platform tag, ``manylinux_X_Y_ARCH`` or a legacy alias such as ``manylinux2014_x86_64``;
            wheels tagged for any older glibc (and ``linux_ARCH``, the PyTorch index's tag) are accepted too.
        torch_index: index URL serving torch for the host's CUDA.
        extras: coea extras to include, e.g. ``("deepspeed", "spark")``.
        dry_run: only plan: return the pip command lines without running them or writing anything.
        include_project: also build coea's own wheel from the source checkout (tests turn it off).

    Returns:
        A :class:`WheelhouseResult`.

    Raises:
        ConfigError: unknown extra, bad Python version, platform or index URL, no source checkout.
        WheelhouseError: pip failed (the message names the package when pip does) or ``out`` holds files that
            contradict each other.
    """
    out = Path(out)
    target = _target(python, platform)
    _check_index_url(torch_index)
    meta = _project_metadata()
    _check_python(meta, target)
    requirements = _target_requirements(meta, extras, target)
    plan = _split(requirements)
    project_dir = _project_dir() if include_project else None
    _warn_if_markers_differ(target)
    if not dry_run:
        out.mkdir(parents=True, exist_ok=True)
    _fetch_sources(plan, out, target, dry_run)
    torch_pin = _fetch_torch(plan, out, target, torch_index, dry_run)
    _fetch_wheels(plan, out, target, torch_pin, dry_run)
    if project_dir is not None:
        _run_step(plan, _project_step(project_dir, out), dry_run)
    result = WheelhouseResult(out=out, target=target, requirements=tuple(str(r) for r in requirements),
                              sdists=tuple(r.name for r in plan.sources), steps=tuple(plan.steps),
                              install_command=_install_command(out), dry_run=dry_run)
    return result if dry_run else _write_outputs(result, meta)


def _install_command(out: str | Path) -> str:
    """The command that installs a wheelhouse on the air-gapped host."""
    return shlex.join(["pip", "install", "--no-index", "--find-links", str(out), "-r",
                       str(Path(out) / "requirements.txt")])


# -------------------------------------------------------------------------------------------------- the target


def _target(python: str, platform: str) -> Target:
    if not re.fullmatch(r"3\.\d{1,2}", python):
        raise ConfigError(f"wheelhouse: --python must be MAJOR.MINOR of a CPython 3, e.g. 3.12 (got {python!r})")
    platforms, arch = _platform_tags(platform)
    return Target(python=python, platform=platform, platforms=platforms, arch=arch)


def _platform_tags(platform: str) -> tuple[tuple[str, ...], str]:
    """Every tag a wheel for ``platform`` may carry, newest first, and the architecture.

    pip matches ``--platform`` literally for ``manylinux_X_Y`` tags, and most wheels are tagged for an older
    glibc (``manylinux_2_17`` = ``manylinux2014``, some only ``manylinux2010``), so the list holds every glibc
    2.Y down to 2.5 with the legacy aliases. ``linux_ARCH`` comes last: the PyTorch index tags its CUDA builds so.
    """
    major_minor, arch = _parse_platform(platform)
    if major_minor[0] != 2:
        raise ConfigError(f"wheelhouse: --platform {platform!r}: only glibc 2 (manylinux_2_Y) tags exist")
    aliases = {v: k for k, v in _LEGACY_MANYLINUX.items() if arch in _LEGACY_ARCHES[k]}
    found: list[str] = []
    for minor in range(major_minor[1], _OLDEST_GLIBC_MINOR - 1, -1):
        found.append(f"manylinux_2_{minor}_{arch}")
        if (2, minor) in aliases:
            found.append(f"{aliases[(2, minor)]}_{arch}")
    return tuple(found + [f"linux_{arch}"]), arch


def _parse_platform(platform: str) -> tuple[tuple[int, int], str]:
    match = _MANYLINUX.match(platform)
    if match:
        return (int(match["major"]), int(match["minor"])), match["arch"]
    prefix, _, arch = platform.partition("_")
    if prefix in _LEGACY_MANYLINUX and arch in _LEGACY_ARCHES[prefix]:
        return _LEGACY_MANYLINUX[prefix], arch
    raise ConfigError(f"wheelhouse: --platform must be a Linux wheel tag such as {DEFAULT_PLATFORM} or "
                      f"manylinux2014_x86_64 (got {platform!r})")


def _check_python(meta: ProjectMetadata, target: Target) -> None:
    if meta.requires_python and target.python + ".0" not in SpecifierSet(meta.requires_python):
        raise ConfigError(f"wheelhouse: --python {target.python}: {meta.name} requires Python "
                          f"{meta.requires_python}")


def _check_index_url(url: str) -> None:
    if urllib.parse.urlparse(url).scheme not in ("http", "https", "file"):
        raise ConfigError(f"wheelhouse: --torch-index must be an http(s):// or file:// URL (got {url!r})")


def _warn_if_markers_differ(target: Target) -> None:
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if (here, sys.platform, host_platform.machine()) != (target.python, "linux", target.arch):
        log.warning("pip evaluates the markers of transitive dependencies for this interpreter (Python %s on "
                    "%s %s), not for the target %s; run this with Python %s on Linux %s for the exact set",
                    here, sys.platform, host_platform.machine(), target.name, target.python, target.arch)


# ------------------------------------------------------------------------------------------------ requirements


def _project_metadata() -> ProjectMetadata:
    """coea's installed metadata (the source of truth for what the host needs)."""
    meta = importlib.metadata.metadata(PROJECT)
    return ProjectMetadata(name=meta["Name"], version=meta["Version"],
                           requires=tuple(importlib.metadata.requires(PROJECT) or ()),
                           extras=tuple(meta.get_all("Provides-Extra") or ()),
                           requires_python=meta.get("Requires-Python") or "")


def _target_requirements(meta: ProjectMetadata, extras: Iterable[str], target: Target) -> list[Requirement]:
    """The project's requirements that apply on ``target`` with ``extras``, markers dropped, one per name.

    A requirement on the project itself (``coea[spark,dev]; extra == "all"``) adds its extras. Two requirements
    on one name (pyspark from ``spark`` and ``dev``) merge into one with both specifiers.

    Raises:
        ConfigError: an extra the project does not provide.
    """
    wanted = _check_extras(meta, extras)
    chosen: list[Requirement] = []
    done: set[str] = set()
    while wanted - done:
        extra = sorted(wanted - done)[0]
        done.add(extra)
        for req in _applicable(meta.requires, extra, target):
            if canonicalize_name(req.name) == canonicalize_name(meta.name):
                wanted |= {canonicalize_name(e) for e in req.extras}
            else:
                chosen.append(req)
    return _merge(chosen)


def _check_extras(meta: ProjectMetadata, extras: Iterable[str]) -> set[str]:
    provided = {canonicalize_name(e) for e in meta.extras}
    asked = {canonicalize_name(e) for e in extras if e.strip()}
    unknown = sorted(asked - provided)
    if unknown:
        raise ConfigError(f"wheelhouse: unknown extra {', '.join(unknown)} ({meta.name} provides: "
                          f"{', '.join(sorted(provided)) or 'none'})")
    return asked | {""}


def _applicable(lines: Iterable[str], extra: str, target: Target) -> Iterable[Requirement]:
    """Requirements that ``extra`` adds on ``target`` ("" = the base list without any extra).

    A requirement belongs to an extra when its marker holds with that extra and not without it, so a
    ``python_version`` marker alone counts once, in the base list.
    """
    env = target.marker_environment()
    for line in lines:
        try:
            req = Requirement(line)
        except InvalidRequirement as exc:
            raise WheelhouseError(f"unreadable requirement {line!r}: {exc}") from exc
        holds = req.marker is None or req.marker.evaluate(env | {"extra": extra})
        in_base = req.marker is None or req.marker.evaluate(env | {"extra": ""})
        if holds and (extra == "" or not in_base):
            yield req


def _merge(reqs: Iterable[Requirement]) -> list[Requirement]:
    merged: dict[str, Requirement] = {}
    for req in reqs:
        key = canonicalize_name(req.name)
        if key in merged:
            first = merged[key]
            req = Requirement(_spec(first.name, first.extras | req.extras, first.specifier & req.specifier,
                                    first.url or req.url))
        else:
            req = Requirement(_spec(req.name, req.extras, req.specifier, req.url))
        merged[key] = req
    return list(merged.values())


def _spec(name: str, extras: Iterable[str], specifier: SpecifierSet, url: str | None) -> str:
    extra = f"[{','.join(sorted(extras))}]" if extras else ""
    return f"{name}{extra} @ {url}" if url else f"{name}{extra}{specifier}"


def _split(requirements: list[Requirement]) -> _Plan:
    torch = next((r for r in requirements if canonicalize_name(r.name) == "torch"), None)
    sources = [r for r in requirements if canonicalize_name(r.name) in SOURCE_ONLY]
    wheels = [r for r in requirements if r is not torch and r not in sources]
    return _Plan(wheels=wheels, torch=torch, sources=sources)


# --------------------------------------------------------------------------------------------------- the steps


def _pip(*args: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "pip", *args)


def _fetch_sources(plan: _Plan, out: Path, target: Target, dry_run: bool) -> None:
    """Step 1: sdists of SOURCE_ONLY packages; their requirements and build backend join the wheel step."""
    if not plan.sources:
        return
    names = ",".join(r.name for r in plan.sources)
    step = PipStep(f"{names}: no wheel is published, so the sdist is fetched and pip builds it on the host at "
                   "install time",
                   _pip("download", *_PIP_OPTIONS, "--no-deps", "--no-binary", names,
                        "--python-version", target.python, "-d", str(out), *(str(r) for r in plan.sources)))
    _run_step(plan, step, dry_run)
    if dry_run:  # the sdists are not there to read; a real run adds their PKG-INFO requirements
        extra = [Requirement(r) for r in LEGACY_BUILD_REQUIRES]
    else:
        extra = [need for req in plan.sources for need in _sdist_needs(out, req, target)]
    extra += [Requirement(x) for r in plan.sources for x in SOURCE_ONLY[canonicalize_name(r.name)]]
    torch_deps = [r for r in extra if canonicalize_name(r.name) == "torch"]
    if torch_deps and plan.torch is None:
        plan.torch = torch_deps[0]  # torch always comes from the CUDA index, whoever asks for it
    plan.wheels = _merge(plan.wheels + [r for r in extra if canonicalize_name(r.name) != "torch"])


def _sdist_needs(out: Path, req: Requirement, target: Target) -> list[Requirement]:
    """What the downloaded sdist of ``req`` needs on ``target``: its run-time requirements and build backend."""
    path = _find_dist(out, req.name, sdist=True)
    requires, build = _sdist_requirements(path)
    needs = list(_applicable(requires, "", target))
    log.info("%s needs %s at run time and %s to build", path.name, ", ".join(str(r) for r in needs),
             ", ".join(build))
    return needs + [Requirement(b) for b in build]


def _fetch_torch(plan: _Plan, out: Path, target: Target, torch_index: str, dry_run: bool) -> str | None:
    """Step 2: torch and its CUDA runtime wheels from the CUDA index; returns the pin for step 3."""
    if plan.torch is None:
        return None
    step = PipStep(f"torch for the host's CUDA from {torch_index}",
                   _pip("download", *_PIP_OPTIONS, *target.pip_flags(), "-d", str(out),
                        "--index-url", torch_index, str(plan.torch)))
    _run_step(plan, step, dry_run)
    if dry_run:
        return TORCH_PIN_PLACEHOLDER
    version = _version_of(_find_dist(out, "torch", sdist=False))
    _warn_if_not_from_index(version, torch_index)
    return f"torch=={version}"


def _fetch_wheels(plan: _Plan, out: Path, target: Target, torch_pin: str | None, dry_run: bool) -> None:
    """Step 3: every other requirement, binary only; --find-links DIR lets the pinned torch resolve from step 2."""
    specs = [str(r) for r in plan.wheels] + ([torch_pin] if torch_pin else [])
    if not specs:
        return
    title = "everything else, binary only, from the configured index"
    if plan.sources and dry_run:
        title += " (a real run adds the requirements listed in the sdists' PKG-INFO)"
    if torch_pin:
        title += "; torch pinned to the build saved by the torch step"
    step = PipStep(title, _pip("download", *_PIP_OPTIONS, *target.pip_flags(), "-d", str(out),
                               "--find-links", str(out), *specs))
    _run_step(plan, step, dry_run)


def _project_step(project_dir: Path, out: Path) -> PipStep:
    return PipStep(f"{PROJECT}'s own wheel from the source checkout",
                   _pip("wheel", *_PIP_OPTIONS, "--no-deps", "-w", str(out), str(project_dir)))


def _project_dir() -> Path:
    """The source checkout coea is installed from (editable installs; a wheel install has no source)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise ConfigError(f"wheelhouse: {PROJECT} is not installed from a source checkout ({root} has no "
                          "pyproject.toml); run it from one (pip install -e .)")
    return root


def _run_step(plan: _Plan, step: PipStep, dry_run: bool) -> None:
    plan.steps.append(step)
    if dry_run:
        return
    log.info("step %d: %s", len(plan.steps), step.title)
    log.debug("%s", step.line())
    done = _run_pip(list(step.argv))
    if done.returncode != 0:
        raise WheelhouseError(_failure_message(step, done))


def _run_pip(argv: list[str]) -> PipRun:
    """Run pip, streaming its output to the log, and keep the tail for the error message."""
    tail: collections.deque[str] = collections.deque(maxlen=200)
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip()
            tail.append(line)
            # One line per file saved keeps the log readable; -v shows everything pip says.
            saved = line.startswith(("Saved ", "File was already downloaded", "ERROR"))
            log.log(logging.INFO if saved else logging.DEBUG, "pip: %s", line)
    return PipRun(returncode=proc.returncode, output="\n".join(tail))


def _failure_message(step: PipStep, done: PipRun) -> str:
    """One line: which pip step failed, for which package when pip says so, and pip's own error."""
    lines = [ln.strip() for ln in done.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR")]
    reason = (errors or lines or [f"exit status {done.returncode}"])[-1].removeprefix("ERROR: ")
    package = _failed_package("\n".join(errors or lines))
    what = f" for {package}" if package else ""
    return f"pip {step.argv[3]} failed{what} (exit {done.returncode}): {reason}"


def _failed_package(text: str) -> str | None:
    for pattern in _PIP_FAILED_FOR:
        match = pattern.search(text)
        if match:
            spec = match[1].strip("'\"").rstrip(".,:")
            try:
                return Requirement(spec).name
            except InvalidRequirement:
                return spec
    return None


def _warn_if_not_from_index(version: str, torch_index: str) -> None:
    """Say so when the saved torch is not the index's CUDA build (a pip.conf extra-index-url can win)."""
    local = urllib.parse.urlparse(torch_index).path.rstrip("/").rsplit("/", 1)[-1]
    if re.fullmatch(r"cu\d+|rocm[\d.]+|cpu", local) and not version.endswith("+" + local):
        log.warning("torch %s is not the %s build the torch index serves; check pip's extra-index-url "
                    "settings", version, local)


# -------------------------------------------------------------------------------------------------- the folder


def _dist_files(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.name not in OUTPUTS)


def _parse_name(path: Path) -> tuple[str, str, str] | None:
    """(canonical name, version, "wheel" | "sdist") of a distribution file, or None for anything else."""
    filename = urllib.parse.unquote(path.name)  # some indexes serve 'torch-2.6.0%2Bcu124-...'
    try:
        if filename.endswith(".whl"):
            name, version, _, _ = parse_wheel_filename(filename)
            return name, str(version), "wheel"
        name, version = parse_sdist_filename(filename)
        return name, str(version), "sdist"
    except (InvalidWheelFilename, InvalidSdistFilename):
        return None


def _find_dist(out: Path, name: str, *, sdist: bool) -> Path:
    kind = "sdist" if sdist else "wheel"
    key = canonicalize_name(name)
    for path in _dist_files(out):
        parsed = _parse_name(path)
        if parsed and parsed[0] == key and parsed[2] == kind:
            return path
    raise WheelhouseError(f"pip reported success but {out} holds no {kind} of {name}")


def _version_of(path: Path) -> str:
    parsed = _parse_name(path)
    assert parsed is not None  # _find_dist only returns parseable files
    return parsed[1]


def _sdist_requirements(path: Path) -> tuple[list[str], list[str]]:
    """Requires-Dist from the sdist's PKG-INFO and its build backend's requirements.

    Returns:
        (requirement lines, build requirements); the build requirements are pyproject.toml's
        ``[build-system] requires`` or, for a setup.py-only sdist, pip's fallback (setuptools, wheel).
    """
    members = _sdist_members(path, ("PKG-INFO", "pyproject.toml"))
    if "PKG-INFO" not in members:
        raise WheelhouseError(f"{path.name} has no PKG-INFO; cannot tell what it needs on the host")
    info = email.parser.Parser().parsestr(members["PKG-INFO"])
    if "requires-dist" in {d.lower() for d in info.get_all("Dynamic") or ()}:
        # setup.py computes them; what it adds beyond PKG-INFO on a CUDA host is listed in SOURCE_ONLY.
        log.info("%s computes its requirements in setup.py; taking PKG-INFO's list", path.name)
    requires = list(info.get_all("Requires-Dist") or ())
    build = list(LEGACY_BUILD_REQUIRES)
    if "pyproject.toml" in members:
        build = tomllib.loads(members["pyproject.toml"]).get("build-system", {}).get("requires", build)
    return requires, build


def _sdist_members(path: Path, names: Sequence[str]) -> dict[str, str]:
    """Top-level files ``names`` of an sdist (``NAME-VERSION/<file>``), by file name."""
    found: dict[str, str] = {}
    if path.name.endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            for member in archive.namelist():
                parts = member.split("/")
                if len(parts) == 2 and parts[1] in names:
                    found[parts[1]] = archive.read(member).decode("utf-8")
        return found
    with tarfile.open(path) as archive:
        for member in archive.getmembers():
            parts = member.name.split("/")
            if len(parts) == 2 and parts[1] in names and member.isfile():
                found[parts[1]] = archive.extractfile(member).read().decode("utf-8")  # type: ignore[union-attr]
    return found


def _target_tags(target: Target) -> frozenset[tags.Tag]:
    version = tuple(int(x) for x in target.python.split("."))
    return frozenset([*tags.cpython_tags(version, abis=[target.abi], platforms=target.platforms),
                      *tags.compatible_tags(version, target.abi, target.platforms)])


def _inventory(out: Path, target: Target) -> list[dict]:
    """MANIFEST.json's file entries; refuses wheels for another target and two versions of one name.

    A rerun into the same folder keeps what is there, so a leftover from another target or an older run
    would otherwise end up in requirements.txt.
    """
    supported = _target_tags(target)
    entries: list[dict] = []
    versions: dict[str, set[str]] = collections.defaultdict(set)
    for path in _dist_files(out):
        parsed = _parse_name(path)
        if parsed is None:
            raise WheelhouseError(f"{path} is not a wheel or sdist; use an empty --out folder")
        name, version, kind = parsed
        if kind == "wheel" and not supported & set(parse_wheel_filename(urllib.parse.unquote(path.name))[3]):
            raise WheelhouseError(f"{path.name} is not for {target.name}; use an empty --out folder")
        versions[name].add(version)
        entries.append({"file": path.name, "name": name, "version": version, "kind": kind,
                        "sha256": _sha256(path), "size": path.stat().st_size})
    clashes = [f"{n} ({', '.join(sorted(v, key=Version))})" for n, v in versions.items() if len(v) > 1]
    if clashes:
        raise WheelhouseError(f"{out} holds several versions of {'; '.join(clashes)}; use an empty --out folder")
    return entries


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_outputs(result: WheelhouseResult, meta: ProjectMetadata) -> WheelhouseResult:
    files = _inventory(result.out, result.target)
    pins = sorted({f"{f['name']}=={f['version']}" for f in files})
    (result.out / "requirements.txt").write_text(
        f"# {meta.name} {meta.version} for {result.target.name}; install with:\n"
        f"#   {result.install_command}\n" + "".join(p + "\n" for p in pins))
    manifest = {
        "project": meta.name, "version": meta.version,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "target": result.target.name, "python": result.target.python, "platform": result.target.platform,
        "platform_tags": list(result.target.platforms), "implementation": "cp", "abi": result.target.abi,
        "requirements": list(result.requirements), "sdists": list(result.sdists),
        "built_with": {"python": host_platform.python_version(), "platform": host_platform.platform(),
                       "pip": _pip_version()},
        "commands": [s.line() for s in result.steps],
        "install": result.install_command,
        "files": files,
    }
    (result.out / "MANIFEST.json").write_text(json.dumps(manifest, indent=2) + "\n")
    log.info("wrote %d files' manifest and requirements to %s", len(files), result.out)
    return replace(result, pins=tuple(pins), files=tuple(files))


def _pip_version() -> str:
    try:
        return importlib.metadata.version("pip")
    except importlib.metadata.PackageNotFoundError:
        return ""
