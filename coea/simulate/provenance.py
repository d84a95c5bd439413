"""Which code a simulation's results came from (docs/simulate.md, "Provenance").

Results must come from a commit: :func:`check_provenance` reads the git commit of the checkout and refuses (a
:class:`DirtyTreeError`, exit 2 in the CLI) when the code or configs have uncommitted changes, or when the commit
cannot be read (not a git checkout). ``allow_dirty=True`` (``--allow-dirty``) runs anyway and marks the results:
their provenance says ``dirty`` and lists the changed paths, and results.md says so in its first lines.

What counts as "the code": :data:`WATCHED` (tracked changes and untracked files), without ``benchmarks/results``
(where the results themselves are written).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

from coea.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
WATCHED = ("coea", "loops", "storage", "quantizer", "spark_jobs", "benchmarks", "configs", "pyproject.toml")
EXCLUDED = ("benchmarks/results",)
PROVENANCE_FILE = "provenance.json"


class DirtyTreeError(ConfigError):
    """Results would be written from code that matches no commit (one line; the CLI exits 2)."""


@dataclass
class Provenance:
    """The code a run used. commit: ``git rev-parse HEAD`` (None outside a git checkout); changed: the
    uncommitted paths under :data:`WATCHED`; allow_dirty: the run was told to go on anyway."""

    commit: str | None
    changed: list[str] = field(default_factory=list)
    allow_dirty: bool = False
    at: str = ""

    @property
    def dirty(self) -> bool:
        return self.commit is None or bool(self.changed)

    def label(self) -> str:
        """One line for results.md, e.g. ``commit 1a2b3c4d5e6f`` or ``commit 1a2b3c4d5e6f + 2 uncommitted ...``."""
        head = f"commit {self.commit[:12]}" if self.commit else "no git commit"
        if not self.dirty:
            return head
        return (f"{head} + {len(self.changed)} uncommitted change(s) (--allow-dirty: these results match no "
                f"commit)")

    def as_dict(self) -> dict:
        return {**asdict(self), "dirty": self.dirty}


def git_state(repo: Path = REPO) -> tuple[str | None, list[str]]:
    """(HEAD commit or None, uncommitted paths under :data:`WATCHED` except :data:`EXCLUDED`)."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)

    head = git("rev-parse", "HEAD")
    if head.returncode != 0:
        return None, []
    spec = [p for p in WATCHED if (repo / p).exists()] + [f":(exclude){p}" for p in EXCLUDED]
    status = git("status", "--porcelain", "--untracked-files=all", "--", *spec)
    if status.returncode != 0:
        return None, []
    return head.stdout.strip(), sorted(line[3:] for line in status.stdout.splitlines() if line.strip())


def check_provenance(allow_dirty: bool = False, repo: Path = REPO) -> Provenance:
    """The run's provenance; raises :class:`DirtyTreeError` on a dirty or unknown tree unless ``allow_dirty``."""
    commit, changed = git_state(repo)
    prov = Provenance(commit, changed, bool(allow_dirty),
                      dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    if prov.dirty and not allow_dirty:
        what = (f"{len(changed)} uncommitted change(s) ({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''})"
                if commit else f"{repo} is not a git checkout")
        raise DirtyTreeError(f"provenance: {what}; results must come from a commit: commit first, or pass "
                             "--allow-dirty to run anyway and mark the results")
    return prov


def record(out_dir: Path, prov: Provenance) -> list[dict]:
    """Append ``prov`` to ``OUT/provenance.json`` (one entry per invocation: a resumed run may span commits);
    returns every entry."""
    path = Path(out_dir) / PROVENANCE_FILE
    entries = json.loads(path.read_text()) if path.exists() else []
    entries.append(prov.as_dict())
    path.write_text(json.dumps(entries, indent=1))
    return entries


def read(out_dir: Path) -> list[dict]:
    """The entries :func:`record` wrote (none: an empty list)."""
    path = Path(out_dir) / PROVENANCE_FILE
    return json.loads(path.read_text()) if path.exists() else []


def summarise(entries: list[dict]) -> dict:
    """What results.md and summary.json say: the commits the results came from, and whether any invocation ran
    from a dirty tree (then ``dirty`` is true and the results are marked)."""
    commits = list(dict.fromkeys(e.get("commit") for e in entries))
    return {"commits": commits, "dirty": any(e.get("dirty") for e in entries), "invocations": len(entries),
            "changed": sorted({p for e in entries for p in e.get("changed", [])})}
