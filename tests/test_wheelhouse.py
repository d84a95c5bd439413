"""`coea wheelhouse`: requirements for the target, exact pip command lines, manifest, errors, one real download.

pip never runs in the default tests: ``_run_pip`` is replaced by a fake that writes what pip would save.
"""

from __future__ import annotations

import hashlib
import io
import json
import shlex
import sys
import tarfile
import tomllib
from pathlib import Path

import pytest

from coea import cli, wheelhouse
from coea.wheelhouse import PipRun, ProjectMetadata, WheelhouseError, build_wheelhouse

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
TARGET_FLAGS = ["--only-binary=:all:"]
for _tag in ([f"manylinux_2_{m}_x86_64" for m in range(28, 17, -1)]
             + ["manylinux_2_17_x86_64", "manylinux2014_x86_64"]
             + [f"manylinux_2_{m}_x86_64" for m in range(16, 12, -1)]
             + ["manylinux_2_12_x86_64", "manylinux2010_x86_64"]
             + [f"manylinux_2_{m}_x86_64" for m in range(11, 5, -1)]
             + ["manylinux_2_5_x86_64", "manylinux1_x86_64", "linux_x86_64"]):
    TARGET_FLAGS += ["--platform", _tag]
TARGET_FLAGS += ["--python-version", "3.12", "--implementation", "cp", "--abi", "cp312"]
PIP_OPTS = ["--disable-pip-version-check", "--progress-bar", "off"]

FAKE = ProjectMetadata(
    name="coea", version="0.1.0", requires_python=">=3.11", extras=("all", "deepspeed", "dev", "spark"),
    requires=(
        "torch>=2.4",
        "numpy>=1.26",
        'tomli>=2; python_version < "3.11"',                         # not on 3.12
        'setuptools; python_version >= "3.12"',                      # on 3.12 (not on this 3.11 machine)
        'pywin32>=300; sys_platform == "win32"',                     # not on Linux
        'nvidia-nccl-cu12; platform_machine == "x86_64" and sys_platform == "linux"',
        'pyspark>=3.5; extra == "spark"',
        'deepspeed>=0.15; extra == "deepspeed"',
        'pytest>=8.0; extra == "dev"',
        'pyspark<5; extra == "dev"',
        'coea[deepspeed,dev,spark]; extra == "all"',
    ),
)


@pytest.fixture
def fake_meta(monkeypatch):
    monkeypatch.setattr(wheelhouse, "_project_metadata", lambda: FAKE)


def _plan(tmp_path, **kw):
    return build_wheelhouse(tmp_path / "wh", dry_run=True, include_project=False, **kw)


# ------------------------------------------------------------------------------------------------ requirements


def test_markers_are_evaluated_for_the_target_not_this_machine(fake_meta, tmp_path):
    plan = _plan(tmp_path)
    assert plan.requirements == ("torch>=2.4", "numpy>=1.26", "setuptools", "nvidia-nccl-cu12")
    arm = _plan(tmp_path, platform="manylinux_2_28_aarch64")
    assert "nvidia-nccl-cu12" not in arm.requirements
    assert arm.target.platforms[-2:] == ("manylinux_2_5_aarch64", "linux_aarch64")
    assert "manylinux2014_aarch64" in arm.target.platforms
    assert not any(t.startswith(("manylinux2010", "manylinux1")) for t in arm.target.platforms)  # x86 only


def test_extras_are_honoured_and_merged(fake_meta, tmp_path):
    base = set(_plan(tmp_path).requirements)
    assert set(_plan(tmp_path, extras=["spark"]).requirements) - base == {"pyspark>=3.5"}
    every = _plan(tmp_path, extras=["all"])
    # 'all' names coea[deepspeed,dev,spark]; pyspark from spark and dev is one requirement with both bounds.
    assert set(every.requirements) - base == {"deepspeed>=0.15", "pytest>=8.0", "pyspark<5,>=3.5"}
    assert every.sdists == ("deepspeed",)


def test_real_metadata_gives_the_pyproject_dependencies(tmp_path):
    """Without a fake: coea's installed metadata, as pyproject.toml declares it."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    plan = _plan(tmp_path, extras=["deepspeed", "spark"])
    want = project["dependencies"] + project["optional-dependencies"]["deepspeed"] + \
        project["optional-dependencies"]["spark"]
    assert sorted(plan.requirements) == sorted(want)


def test_legacy_platform_tag_is_accepted(fake_meta, tmp_path):
    tags = _plan(tmp_path, platform="manylinux2014_x86_64").target.platforms
    assert tags[:2] == ("manylinux_2_17_x86_64", "manylinux2014_x86_64")
    assert tags[-1] == "linux_x86_64" and "manylinux_2_28_x86_64" not in tags


@pytest.mark.parametrize("args, says", [
    (["--extras", "deepspeed,gpu"], "unknown extra gpu"),
    (["--python", "3.9"], "requires Python >=3.11"),
    (["--python", "python3"], "--python must be MAJOR.MINOR"),
    (["--platform", "win_amd64"], "--platform must be a Linux wheel tag"),
    (["--torch-index", "download.pytorch.org/whl/cu124"], "--torch-index must be"),
])
def test_bad_arguments_exit_2_with_one_line(fake_meta, tmp_path, capsys, args, says):
    code = cli.main(["wheelhouse", "--out", str(tmp_path / "wh"), "--dry-run", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert says in err[-1] and err[-1].startswith("coea: config error: wheelhouse:")
    assert not (tmp_path / "wh").exists()


# -------------------------------------------------------------------------------------------- pip command lines


def test_dry_run_prints_the_exact_pip_command_lines(fake_meta, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(wheelhouse, "_run_pip", lambda argv: pytest.fail("a dry run must not run pip"))
    out = tmp_path / "wh"
    plan = build_wheelhouse(out, extras=["deepspeed"], torch_index="https://example.invalid/whl/cu121",
                            dry_run=True)
    assert [list(s.argv) for s in plan.steps] == [
        [PY, "-m", "pip", "download", *PIP_OPTS, "--no-deps", "--no-binary", "deepspeed",
         "--python-version", "3.12", "-d", str(out), "deepspeed>=0.15"],
        [PY, "-m", "pip", "download", *PIP_OPTS, *TARGET_FLAGS, "-d", str(out),
         "--index-url", "https://example.invalid/whl/cu121", "torch>=2.4"],
        [PY, "-m", "pip", "download", *PIP_OPTS, *TARGET_FLAGS, "-d", str(out), "--find-links", str(out),
         "numpy>=1.26", "setuptools>=40.8.0", "nvidia-nccl-cu12", "wheel", "nvidia-ml-py",
         "torch==<version saved by the torch step>"],
        [PY, "-m", "pip", "wheel", *PIP_OPTS, "--no-deps", "-w", str(out), str(REPO)],
    ]
    assert not out.exists()

    assert cli.main(["wheelhouse", "--out", str(out), "--extras", "deepspeed", "--dry-run",
                     "--torch-index", "https://example.invalid/whl/cu121"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [ln for ln in printed if not ln.startswith("#")] == [s.line() for s in plan.steps]
    assert printed[-1] == f"# pip install --no-index --find-links {out} -r {out}/requirements.txt"


def test_without_torch_or_sdists_there_is_one_download(monkeypatch, tmp_path):
    monkeypatch.setattr(wheelhouse, "_project_metadata",
                        lambda: ProjectMetadata("coea", "0.1.0", ("six",), ()))
    plan = _plan(tmp_path)
    assert [list(s.argv) for s in plan.steps] == [
        [PY, "-m", "pip", "download", *PIP_OPTS, *TARGET_FLAGS, "-d", str(tmp_path / "wh"),
         "--find-links", str(tmp_path / "wh"), "six"]]


# ------------------------------------------------------------------------------- manifest and requirements.txt


def _sdist(path: Path, pkg_info: str) -> None:
    with tarfile.open(path, "w:gz") as archive:
        data = pkg_info.encode()
        member = tarfile.TarInfo(f"{path.name.removesuffix('.tar.gz')}/PKG-INFO")
        member.size = len(data)
        archive.addfile(member, io.BytesIO(data))


class FakePip:
    """Writes the files pip would save for each step and records the command lines."""

    SAVES = {
        "torch": ["torch-2.6.0+cu124-cp312-cp312-linux_x86_64.whl",
                  "nvidia_nccl_cu12-2.21.5-py3-none-manylinux2014_x86_64.whl"],
        "wheels": ["numpy-2.1.3-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl",
                   "hjson-3.1.0-py3-none-any.whl", "setuptools-80.9.0-py3-none-any.whl",
                   "wheel-0.45.1-py3-none-any.whl", "nvidia_ml_py-12.570.86-py3-none-any.whl"],
    }

    def __init__(self, out: Path):
        self.out, self.calls = out, []

    def __call__(self, argv: list[str]) -> PipRun:
        self.calls.append(argv)
        if "--no-binary" in argv:
            _sdist(self.out / "deepspeed-0.16.4.tar.gz",
                   "Metadata-Version: 2.1\nName: deepspeed\nVersion: 0.16.4\nRequires-Dist: hjson\n"
                   "Requires-Dist: torch\nRequires-Dist: pywin32; sys_platform == 'win32'\n"
                   "Requires-Dist: pytest; extra == 'dev'\n\n")
        elif "--index-url" in argv:
            self._save("torch")
        elif argv[3] == "download":
            # torch pinned to step 2's build; the sdist's own requirements and what its setup.py adds on CUDA
            assert {"torch==2.6.0+cu124", "hjson", "nvidia-ml-py"} <= set(argv)
            assert not {"pywin32", "pytest", "torch"} & set(argv)
            self._save("wheels")
        else:
            (self.out / "coea-0.1.0-py3-none-any.whl").write_bytes(b"coea wheel")
        return PipRun(0, "Saved ...")

    def _save(self, step: str) -> None:
        for name in self.SAVES[step]:
            (self.out / name).write_bytes(name.encode() * 3)


def test_manifest_and_requirements_from_a_fake_download(fake_meta, tmp_path, monkeypatch, capsys):
    out = tmp_path / "wh"
    pip = FakePip(out)
    monkeypatch.setattr(wheelhouse, "_run_pip", pip)
    assert cli.main(["wheelhouse", "--out", str(out), "--extras", "deepspeed"]) == 0
    assert [c[3] for c in pip.calls] == ["download", "download", "download", "wheel"]

    pins = [ln for ln in (out / "requirements.txt").read_text().splitlines() if not ln.startswith("#")]
    assert pins == ["coea==0.1.0", "deepspeed==0.16.4", "hjson==3.1.0", "numpy==2.1.3", "nvidia-ml-py==12.570.86",
                    "nvidia-nccl-cu12==2.21.5", "setuptools==80.9.0", "torch==2.6.0+cu124", "wheel==0.45.1"]

    manifest = json.loads((out / "MANIFEST.json").read_text())
    assert (manifest["target"], manifest["python"], manifest["platform"], manifest["abi"]) == (
        "cp312-manylinux_2_28_x86_64", "3.12", "manylinux_2_28_x86_64", "cp312")
    assert manifest["sdists"] == ["deepspeed"]
    assert manifest["commands"] == [shlex.join(c) for c in pip.calls]
    files = {f["file"]: f for f in manifest["files"]}
    assert set(files) == {p.name for p in out.iterdir()} - {"requirements.txt", "MANIFEST.json"}
    for name, entry in files.items():
        data = (out / name).read_bytes()
        assert (entry["sha256"], entry["size"]) == (hashlib.sha256(data).hexdigest(), len(data))
    assert files["deepspeed-0.16.4.tar.gz"]["kind"] == "sdist"

    printed = capsys.readouterr().out
    assert "sdists (no wheel published; pip builds them on the host at install): deepspeed-0.16.4.tar.gz" in printed
    assert printed.rstrip().endswith(f"pip install --no-index --find-links {out} -r {out}/requirements.txt")


@pytest.mark.parametrize("stale, says", [
    ("numpy-2.1.3-cp311-cp311-manylinux_2_17_x86_64.whl", "is not for cp312-manylinux_2_28_x86_64"),
    ("numpy-1.26.4-cp312-cp312-manylinux_2_17_x86_64.whl", "several versions of numpy (1.26.4, 2.1.3)"),
])
def test_leftovers_for_another_target_or_version_are_refused(fake_meta, tmp_path, monkeypatch, stale, says):
    out = tmp_path / "wh"
    out.mkdir()
    (out / stale).write_bytes(b"old")
    monkeypatch.setattr(wheelhouse, "_run_pip", FakePip(out))
    with pytest.raises(WheelhouseError, match=says.replace("(", r"\(").replace(")", r"\)")):
        build_wheelhouse(out, extras=["deepspeed"])


def test_pip_failure_is_one_line_naming_the_package_exit_1(fake_meta, tmp_path, monkeypatch, capsys):
    said = ("Collecting numpy>=1.26\n"
            "ERROR: Could not find a version that satisfies the requirement numpy>=1.26 (from versions: none)\n"
            "ERROR: No matching distribution found for numpy>=1.26\n")
    monkeypatch.setattr(wheelhouse, "_run_pip", lambda argv: PipRun(0) if "--index-url" in argv else PipRun(1, said))
    # The torch step "succeeds" without saving torch, so give the folder a torch wheel.
    (tmp_path / "wh").mkdir()
    (tmp_path / "wh" / "torch-2.6.0+cu124-cp312-cp312-linux_x86_64.whl").write_bytes(b"t")
    assert cli.main(["wheelhouse", "--out", str(tmp_path / "wh")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("coea: wheelhouse failed: WheelhouseError: pip download failed for numpy (exit 1): "
                       "No matching distribution found for numpy>=1.26")


# ---------------------------------------------------------------------------------------------- a real download


@pytest.mark.slow
def test_downloads_a_real_pure_wheel_for_the_target(monkeypatch, tmp_path):
    """Real pip, real index: one tiny pure wheel for cp312 / manylinux_2_28_x86_64 through the same path."""
    monkeypatch.setattr(wheelhouse, "_project_metadata",
                        lambda: ProjectMetadata("coea", "0.1.0", ("six>=1.16",), (), ">=3.11"))
    result = build_wheelhouse(tmp_path / "wh", include_project=False)
    wheels = sorted(p.name for p in (tmp_path / "wh").glob("*.whl"))
    assert len(wheels) == 1 and wheels[0].startswith("six-") and wheels[0].endswith("-none-any.whl")
    version = wheels[0].split("-")[1]
    assert result.pins == (f"six=={version}",)
    manifest = json.loads((tmp_path / "wh" / "MANIFEST.json").read_text())
    data = (tmp_path / "wh" / wheels[0]).read_bytes()
    assert manifest["files"][0]["sha256"] == hashlib.sha256(data).hexdigest()
