"""Versioned key-value tables: one immutable RocksDB per round, staged, verified, promoted by a link swap.

Layout under ``root`` (the workdir)::

    root/kv/NNN/db/            RocksDB in raw byte mode (rocksdict ``Options(raw_mode=True)``)
    root/kv/NNN/manifest.json  round, entry count, checksum, created time, writer
    root/kv/CURRENT -> NNN     relative symlink to the promoted round, swapped with one ``os.replace``
    root/kv/.writer.lock       flock held by stage / promote / rollback / expire (one writer at a time)
    root/kv/.staging-NNN-PID/  a table being written; renamed to ``NNN`` only once complete

Value bytes (the cross-language layout) are compact UTF-8 JSON::

    {"round": 3, "categories": ["Film-Noir", "War"], "scores": [0.61, 0.22]}

``categories`` is the ordered C_align list (best first) and ``scores[i]`` belongs to ``categories[i]``.
Keys are defined in :mod:`storage.keys`.

Checksum (also cross-language): SHA-256 over the entries in ascending key order, each entry framed as
``u32be(len(key)) + key + u32be(len(value)) + value``; written as ``"sha256:<hex>"``.

A version is never modified after its rename into place, so readers in other processes open it read-only
(no secondary instance is needed: there is no live primary to catch up with) and switch to a new version when
``CURRENT`` changes. Only one process writes (RocksDB's own rule, and ``.writer.lock`` here).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import re
import shutil
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from rocksdict import (
    AccessType,
    BlockBasedOptions,
    Cache,
    IngestExternalFileOptions,
    Options,
    Rdict,
    ReadOptions,
    SstFileWriter,
    WriteBatch,
    WriteOptions,
)

from storage.keys import kv_key

logger = logging.getLogger(__name__)

MANIFEST_FORMAT = 1
POINTER_NAME = "CURRENT"
_ROUND_DIR = re.compile(r"^\d+$")
_FRAME = struct.Struct(">I")


# --------------------------------------------------------------------------------------------- errors


class KVError(RuntimeError):
    """Base class for KV store errors."""


class KVIntegrityError(KVError):
    """A staged version does not match its manifest (missing, truncated, tampered or unreadable)."""


class KVNotFoundError(KVError):
    """The requested round does not exist (never staged, or expired)."""


class NoCurrentVersionError(KVError):
    """Nothing has been promoted yet under this root."""


# --------------------------------------------------------------------------------------------- values


class KVValue(NamedTuple):
    """One decoded value: the ordered C_align list with scores, and the round that produced it."""

    round: int
    categories: tuple[str, ...]
    scores: tuple[float, ...]

    def as_list(self) -> list[dict[str, Any]]:
        """``[{"category": c, "score": s}, ...]`` in C_align order."""
        return [{"category": c, "score": s} for c, s in zip(self.categories, self.scores, strict=True)]


def encode_value(round: int, categories: Sequence[str], scores: Sequence[float]) -> bytes:
    """Value bytes: compact UTF-8 JSON ``{"round", "categories", "scores"}`` (see module docstring)."""
    if len(categories) != len(scores):
        raise ValueError(f"{len(categories)} categories but {len(scores)} scores")
    if not all(isinstance(c, str) and c for c in categories):
        raise ValueError(f"categories must be non-empty strings: {list(categories)!r}")
    floats = [float(s) for s in scores]
    if not all(math.isfinite(s) for s in floats):
        raise ValueError(f"scores must be finite: {floats!r}")
    doc = {"round": int(round), "categories": list(categories), "scores": floats}
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


def decode_value(data: bytes) -> KVValue:
    """Inverse of :func:`encode_value`; raises ``ValueError`` on bytes that are not a KV value."""
    try:
        doc = json.loads(bytes(data).decode("utf-8"))
        value = KVValue(int(doc["round"]), tuple(doc["categories"]), tuple(float(s) for s in doc["scores"]))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"not a KV value: {bytes(data)[:80]!r}") from err
    if len(value.categories) != len(value.scores):
        raise ValueError(f"KV value has {len(value.categories)} categories but {len(value.scores)} scores")
    return value


def _value_bytes(value: Any, round: int | None) -> bytes:
    """Accept pre-encoded bytes, a :class:`KVValue` or a mapping with categories/scores (round optional)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, KVValue):
        value = value._asdict()
    if isinstance(value, Mapping):
        value_round = value.get("round", round)
        if value_round is None:
            raise ValueError("value has no round and none was given")
        if round is not None and int(value_round) != round:
            raise ValueError(f"value carries round {value_round} but is being staged into round {round}")
        return encode_value(int(value_round), value["categories"], value["scores"])
    raise TypeError(f"value must be bytes, KVValue or a mapping, not {type(value).__name__}")


def _key_bytes(key: Any) -> bytes:
    if not isinstance(key, bytes | bytearray | memoryview):
        raise TypeError(f"keys are raw bytes (storage.keys.kv_key), not {type(key).__name__}: {key!r}")
    if not key:
        raise ValueError("empty key")
    return bytes(key)


# --------------------------------------------------------------------------------------------- checksum


class TableDigest:
    """Incremental table checksum over entries that must arrive in strictly ascending key order."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._last: bytes | None = None
        self.count = 0

    def update(self, key: bytes, value: bytes) -> None:
        if self._last is not None and key <= self._last:
            raise ValueError(f"keys out of order or duplicated: {key!r} after {self._last!r}")
        self._sha.update(_FRAME.pack(len(key)))
        self._sha.update(key)
        self._sha.update(_FRAME.pack(len(value)))
        self._sha.update(value)
        self._last = key
        self.count += 1

    @property
    def checksum(self) -> str:
        return "sha256:" + self._sha.hexdigest()


def table_checksum(sorted_entries: Iterable[tuple[bytes, bytes]]) -> tuple[int, str]:
    """``(count, "sha256:<hex>")`` of key-sorted raw entries, as written into each manifest."""
    digest = TableDigest()
    for key, value in sorted_entries:
        digest.update(key, value)
    return digest.count, digest.checksum


# --------------------------------------------------------------------------------------------- options


def _write_options() -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_error_if_exists(True)
    opts.set_max_background_jobs(2)
    table = BlockBasedOptions()
    table.set_bloom_filter(10, False)  # most serving lookups of unknown keys then skip the data block
    opts.set_block_based_table_factory(table)
    return opts


def _read_options(cache_bytes: int = 0) -> Options:
    opts = Options(raw_mode=True)
    # Open every SST file up front: a version directory expired (deleted) while a reader still has it open
    # keeps working on Linux, because no file is opened lazily afterwards.
    opts.set_max_open_files(-1)
    if cache_bytes:
        table = BlockBasedOptions()
        table.set_block_cache(Cache(cache_bytes))
        table.set_bloom_filter(10, False)
        opts.set_block_based_table_factory(table)
    return opts


def _open_read_only(db_dir: Path, cache_bytes: int = 0) -> Rdict:
    return Rdict(str(db_dir), _read_options(cache_bytes), access_type=AccessType.read_only(False))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _round_name(round: int) -> str:
    if round < 0:
        raise ValueError(f"round must be >= 0, got {round}")
    return f"{round:03d}"


# --------------------------------------------------------------------------------------------- SST files


class SstRange(NamedTuple):
    """One SST file written by :func:`write_sst_file`: its path, key range (inclusive) and entry count."""

    path: Path
    first_key: bytes
    last_key: bytes
    count: int


def write_sst_file(path: Path, sorted_entries: Iterable[tuple[bytes, Any]], *, round: int | None = None) -> SstRange:
    """Write key-sorted entries (strictly ascending raw keys) into one SST file RocksDB can ingest.

    Values may be bytes, :class:`KVValue` or mappings (then ``round`` fills/validates their round).
    Raises ``ValueError`` on unsorted or duplicate keys, or when there is nothing to write.
    """
    path = Path(path)
    writer = SstFileWriter(Options(raw_mode=True))
    writer.open(str(path))
    first: bytes | None = None
    last = b""
    count = 0
    for key, value in sorted_entries:
        key = _key_bytes(key)
        if first is not None and key <= last:
            raise ValueError(f"SST keys must be strictly ascending: {key!r} after {last!r}")
        writer[key] = _value_bytes(value, round)
        first = key if first is None else first
        last = key
        count += 1
    if first is None:
        raise ValueError(f"no entries for SST file {path}")
    writer.finish()
    return SstRange(path, first, last, count)


def write_sst_ranges(
    sorted_entries: Iterable[tuple[bytes, Any]],
    out_dir: Path,
    *,
    round: int | None = None,
    entries_per_file: int = 1_000_000,
) -> list[SstRange]:
    """Split one key-sorted stream into consecutive SST files of at most ``entries_per_file`` entries.

    The files cover disjoint, ascending key ranges, so :meth:`KVStore.ingest` can place them all at the
    bottom level without compaction. (The Spark export writes one such file per sorted partition instead.)
    """
    if entries_per_file < 1:
        raise ValueError("entries_per_file must be >= 1")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    iterator = iter(sorted_entries)
    ranges: list[SstRange] = []
    previous_last: bytes | None = None
    while True:
        chunk = _take(iterator, entries_per_file)
        if not chunk:
            return ranges
        if previous_last is not None and _key_bytes(chunk[0][0]) <= previous_last:
            raise ValueError(f"SST keys must be strictly ascending: {chunk[0][0]!r} after {previous_last!r}")
        sst = write_sst_file(out_dir / f"part-{len(ranges):05d}.sst", chunk, round=round)
        ranges.append(sst)
        previous_last = sst.last_key


def _take(iterator: Iterator, n: int) -> list:
    chunk = []
    for item in iterator:
        chunk.append(item)
        if len(chunk) == n:
            break
    return chunk


# --------------------------------------------------------------------------------------------- store


@dataclass(frozen=True)
class StagedTable:
    """A complete, verified-on-write version directory ``root/kv/NNN`` (not yet served until promoted)."""

    round: int
    path: Path
    count: int
    checksum: str
    created: str
    writer: str


class KVStore:
    """Writer side: stage, verify, promote, roll back and expire whole round versions under ``root/kv``.

    One process writes at a time (an flock on ``root/kv/.writer.lock``, released by the OS on a crash).

    Args:
        root: the workdir; tables live under ``root/kv``.
        batch_size: entries per RocksDB write batch when staging.
        log_every: log staging progress every this many entries.
    """

    def __init__(self, root: Path, *, batch_size: int = 10_000, log_every: int = 1_000_000) -> None:
        self.root = Path(root)
        self.kv_dir = self.root / "kv"
        self.batch_size = batch_size
        self.log_every = log_every

    # ---- paths and queries

    def round_dir(self, round: int) -> Path:
        return self.kv_dir / _round_name(round)

    def db_dir(self, round: int) -> Path:
        return self.round_dir(round) / "db"

    @property
    def pointer(self) -> Path:
        return self.kv_dir / POINTER_NAME

    def list_rounds(self) -> list[int]:
        """Rounds with a complete version directory (manifest present), ascending."""
        if not self.kv_dir.is_dir():
            return []
        rounds = [
            int(p.name)
            for p in self.kv_dir.iterdir()
            if _ROUND_DIR.match(p.name) and (p / "manifest.json").is_file()
        ]
        return sorted(rounds)

    def current_round(self) -> int | None:
        """The promoted round, or ``None`` when nothing was promoted yet."""
        return read_pointer(self.kv_dir)

    def manifest(self, round: int) -> dict[str, Any]:
        path = self.round_dir(round) / "manifest.json"
        if not path.is_file():
            if self.round_dir(round).exists():
                raise KVIntegrityError(f"KV round {round}: {path} is missing")
            raise KVNotFoundError(f"KV round {round} does not exist (available: {self.list_rounds()})")
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise KVIntegrityError(f"KV round {round}: unreadable manifest {path}: {err}") from err

    # ---- staging

    def stage(
        self,
        round: int,
        entries: Iterable[tuple[bytes, Any]],
        *,
        overwrite: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> StagedTable:
        """Write a new version for ``round`` from ``(key bytes, value)`` pairs in any key order.

        Values are bytes (already :func:`encode_value`-d), :class:`KVValue` or mappings with
        ``categories``/``scores``; their round must be ``round``. The table is written into a staging
        directory, flushed, compacted, closed, checksummed into ``manifest.json`` and only then renamed to
        ``root/kv/NNN``: an interrupted stage leaves no visible version. ``progress(n)`` is called after each
        write batch with the number of entries written so far.

        Raises:
            FileExistsError: the round exists and ``overwrite`` is false.
            KVError: trying to overwrite the promoted round.
            ValueError: duplicate keys or malformed values.
        """
        with self._writer_lock():
            staging = self._new_staging(round, overwrite)
            try:
                written = self._write_batches(staging / "db", round, entries, progress)
                return self._seal(round, staging, writer="batch", expected=written)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise

    def ingest(
        self, round: int, sst_paths: Sequence[Path], *, overwrite: bool = False, move: bool = True
    ) -> StagedTable:
        """Stage ``round`` from SST files (:func:`write_sst_ranges`, Spark export) instead of write batches.

        The files must hold disjoint key ranges; they are moved (or copied, ``move=False``) into the new DB.
        The result is the same table, byte for byte in its manifest checksum, as :meth:`stage` would write.
        """
        if not sst_paths:
            raise ValueError("no SST files to ingest")
        with self._writer_lock():
            staging = self._new_staging(round, overwrite)
            try:
                db = Rdict(str(staging / "db"), _write_options())
                try:
                    opts = IngestExternalFileOptions()
                    opts.set_move_files(move)
                    db.ingest_external_file([str(Path(p).resolve()) for p in sst_paths], opts)
                    db.flush()
                finally:
                    db.close()
                return self._seal(round, staging, writer="sst", expected=None)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise

    def _new_staging(self, round: int, overwrite: bool) -> Path:
        self.kv_dir.mkdir(parents=True, exist_ok=True)
        self._remove_leftovers()
        final = self.round_dir(round)
        if final.exists():
            if self.current_round() == round:
                raise KVError(f"KV round {round} is the promoted round; it is never overwritten")
            if not overwrite:
                raise FileExistsError(f"KV round {round} already exists at {final} (pass overwrite=True)")
        staging = self.kv_dir / f".staging-{_round_name(round)}-{os.getpid()}"
        staging.mkdir()
        return staging

    def _write_batches(
        self, db_dir: Path, round: int, entries: Iterable[tuple[bytes, Any]], progress: Callable[[int], None] | None
    ) -> int:
        opts = _write_options()
        opts.prepare_for_bulk_load()  # no compaction while loading; one manual compaction at the end
        db = Rdict(str(db_dir), opts)
        write_opts = WriteOptions()
        write_opts.disable_wal = True  # the whole staging dir is discarded on a crash; flush makes it durable
        written = 0
        next_log = self.log_every
        try:
            batch = WriteBatch(raw_mode=True)
            for key, value in entries:
                batch.put(_key_bytes(key), _value_bytes(value, round))
                if len(batch) >= self.batch_size:
                    written += len(batch)
                    db.write(batch, write_opts)
                    batch = WriteBatch(raw_mode=True)
                    if progress is not None:
                        progress(written)
                    if written >= next_log:
                        logger.info("KV round %d: %d entries staged", round, written)
                        next_log += self.log_every
            if len(batch):
                written += len(batch)
                db.write(batch, write_opts)
                if progress is not None:
                    progress(written)
            db.flush()
            db.compact_range(None, None)
        finally:
            db.close()
        return written

    def _seal(self, round: int, staging: Path, *, writer: str, expected: int | None) -> StagedTable:
        """Checksum the closed staging DB, write its manifest, rename it into place, fsync."""
        count, checksum = self._scan(staging / "db", round)
        if expected is not None and count != expected:
            raise ValueError(
                f"KV round {round}: {expected} entries written but {count} distinct keys (duplicate keys in input)"
            )
        created = datetime.now(UTC).isoformat(timespec="seconds")
        manifest = {
            "format": MANIFEST_FORMAT,
            "round": round,
            "count": count,
            "checksum": checksum,
            "checksum_algorithm": "sha256 over ascending keys of u32be(len k)+k+u32be(len v)+v",
            "created": created,
            "writer": writer,
            "key_format": "utf8(csid|short_hash), see storage/keys.py",
            "value_format": 'utf8 json {"round","categories","scores"}',
        }
        with open(staging / "manifest.json", "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(staging)
        final = self.round_dir(round)
        if final.exists():  # overwrite=True (checked in _new_staging): move the old one aside first
            trash = self.kv_dir / f".trash-{final.name}-{os.getpid()}"
            os.rename(final, trash)
            os.rename(staging, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.rename(staging, final)
        _fsync_dir(self.kv_dir)
        logger.info("KV round %d staged: %d entries, %s", round, count, checksum)
        return StagedTable(round, final, count, checksum, created, writer)

    @staticmethod
    def _scan(db_dir: Path, round: int, *, check_values: bool = False) -> tuple[int, str]:
        """Reopen read-only and recompute (count, checksum), verifying block checksums on the way."""
        try:
            db = _open_read_only(db_dir)
        except Exception as err:  # rocksdict raises plain Exception for RocksDB status errors
            raise KVIntegrityError(f"KV round {round}: cannot open {db_dir}: {err}") from err
        try:
            read_opts = ReadOptions()
            read_opts.set_verify_checksums(True)
            read_opts.fill_cache(False)  # a one-off full scan; keep it out of the block cache
            digest = TableDigest()
            it = db.iter(read_opts)
            it.seek_to_first()
            while it.valid():
                key, value = it.key(), it.value()
                if check_values:
                    value_round = decode_value(value).round
                    if value_round != round:
                        raise KVIntegrityError(f"KV round {round}: key {key!r} carries round {value_round}")
                digest.update(key, value)
                it.next()
            it.status()
            return digest.count, digest.checksum
        except KVIntegrityError:
            raise
        except Exception as err:
            raise KVIntegrityError(f"KV round {round}: cannot read {db_dir}: {err}") from err
        finally:
            db.close()

    # ---- verify, promote, rollback, expire

    def verify(self, round: int, *, check_values: bool = True) -> dict[str, Any]:
        """Reopen ``round`` read-only, recompute count and checksum and compare them with its manifest.

        With ``check_values`` every value must decode and carry this round. Returns the manifest.

        Raises:
            KVNotFoundError: no such round.
            KVIntegrityError: missing/tampered manifest, missing or corrupt files, or a mismatch.
        """
        manifest = self.manifest(round)
        if manifest.get("round") != round:
            raise KVIntegrityError(f"KV round {round}: manifest says round {manifest.get('round')!r}")
        try:
            count, checksum = self._scan(self.db_dir(round), round, check_values=check_values)
        except ValueError as err:  # decode_value on a value that is not ours
            raise KVIntegrityError(f"KV round {round}: {err}") from err
        if count != manifest.get("count"):
            raise KVIntegrityError(f"KV round {round}: {count} entries on disk, manifest says {manifest.get('count')}")
        if checksum != manifest.get("checksum"):
            raise KVIntegrityError(
                f"KV round {round}: checksum {checksum} on disk, manifest says {manifest.get('checksum')}"
            )
        return manifest

    def promote(self, round: int, *, verify: bool = True) -> None:
        """Verify ``round`` (unless told not to) and atomically point ``root/kv/CURRENT`` at it."""
        with self._writer_lock():
            if verify:
                self.verify(round)
            elif not (self.round_dir(round) / "manifest.json").is_file():
                raise KVNotFoundError(f"KV round {round} does not exist (available: {self.list_rounds()})")
            previous = self.current_round()
            self._swap_pointer(round)
        logger.info("KV round %d promoted (was %s)", round, previous)

    def rollback(self, to: int) -> None:
        """Serve an earlier (still retained) round again; it is verified first."""
        if to not in self.list_rounds():
            raise KVNotFoundError(f"cannot roll back to KV round {to}: retained rounds are {self.list_rounds()}")
        logger.warning("KV rollback from round %s to %d", self.current_round(), to)
        self.promote(to)

    def expire(self, keep: int) -> list[int]:
        """Delete whole versions except the newest ``keep`` rounds and the promoted one; returns deleted rounds.

        Readers that still have an expired version open keep working (all its files are open; Linux frees
        them on close); they move to the promoted version on their next refresh.
        """
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        with self._writer_lock():
            rounds = self.list_rounds()
            current = self.current_round()
            retained = set(rounds[-keep:]) | ({current} if current is not None else set())
            deleted = self.remove([r for r in rounds if r not in retained])
            if deleted:
                logger.info("KV expired rounds %s (kept %s)", deleted, sorted(retained))
        return deleted

    def remove(self, rounds: Iterable[int]) -> list[int]:
        """Delete these whole versions, complete or not; never the promoted one. Returns the rounds deleted.

        Whole-round retention (loops/retention.py) decides which rounds go; this only refuses the promoted
        version (``KVError``) and skips rounds that have no version. Open readers keep working (see ``expire``).
        """
        rounds = sorted(set(rounds))
        if not self.kv_dir.is_dir():
            return []
        with self._writer_lock():
            current = self.current_round()
            if current in rounds:
                raise KVError(f"KV round {current} is promoted; promote another round before removing it")
            deleted = []
            for r in rounds:
                if not self.round_dir(r).exists():
                    continue
                trash = self.kv_dir / f".trash-{_round_name(r)}-{os.getpid()}"
                os.rename(self.round_dir(r), trash)  # disappears from list_rounds atomically
                shutil.rmtree(trash, ignore_errors=True)
                deleted.append(r)
            if deleted:
                _fsync_dir(self.kv_dir)
            self._remove_leftovers()
        return deleted

    # ---- internals

    def _swap_pointer(self, round: int) -> None:
        tmp = self.kv_dir / f".{POINTER_NAME}.tmp-{os.getpid()}"
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        os.symlink(_round_name(round), tmp)
        os.replace(tmp, self.pointer)
        _fsync_dir(self.kv_dir)

    def _remove_leftovers(self) -> None:
        """Remove staging/trash dirs of interrupted writers (safe: we hold the writer lock)."""
        for p in self.kv_dir.iterdir():
            if p.name.startswith((".staging-", ".trash-")):
                logger.warning("KV: removing leftover %s from an interrupted write", p.name)
                shutil.rmtree(p, ignore_errors=True)

    @contextlib.contextmanager
    def _writer_lock(self) -> Iterator[None]:
        if getattr(self._lock_state, "depth", 0):  # re-entrant within one thread (rollback -> promote)
            self._lock_state.depth += 1
            try:
                yield
            finally:
                self._lock_state.depth -= 1
            return
        self.kv_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.kv_dir / ".writer.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_state.depth = 1
            try:
                yield
            finally:
                self._lock_state.depth = 0
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @property
    def _lock_state(self) -> threading.local:
        state = self.__dict__.get("_tls")
        if state is None:
            state = self.__dict__["_tls"] = threading.local()
        return state


def read_pointer(kv_dir: Path) -> int | None:
    """The round ``kv_dir/CURRENT`` points at, or ``None`` when there is no pointer yet."""
    try:
        return int(os.readlink(Path(kv_dir) / POINTER_NAME))
    except FileNotFoundError:
        return None


# --------------------------------------------------------------------------------------------- reader


class KVReader:
    """Read side for serving, safe to use from any number of processes while a writer promotes.

    Opens the promoted version read-only and, every ``check_interval_s`` seconds (0: on every call),
    checks ``CURRENT``; after a promotion it opens the new version and then swaps it in, so every call is
    answered from one whole version. One call (``multi_get`` included) always uses one version.

    Args:
        root: the workdir (tables under ``root/kv``).
        check_interval_s: how often lookups check for a promotion (one ``readlink``); 0 checks every call.
        cache_bytes: block cache size for this reader.

    Raises:
        NoCurrentVersionError: nothing has been promoted under ``root``.
    """

    def __init__(self, root: Path, *, check_interval_s: float = 1.0, cache_bytes: int = 64 << 20) -> None:
        self.kv_dir = Path(root) / "kv"
        self._pointer = str(self.kv_dir / POINTER_NAME)
        self.check_interval_s = check_interval_s
        self.cache_bytes = cache_bytes
        self._lock = threading.Lock()
        self._db: Rdict | None = None
        self._round: int | None = None
        self._last_check = 0.0
        if not self.refresh(force=True):
            raise NoCurrentVersionError(f"no KV round promoted under {self.kv_dir}")

    @property
    def round(self) -> int:
        """The round currently served by this reader."""
        assert self._round is not None
        return self._round

    def refresh(self, *, force: bool = False) -> bool:
        """Reopen if ``CURRENT`` moved (or ``force``); returns whether a version is open afterwards."""
        with self._lock:
            self._last_check = time.monotonic()
            for _ in range(5):  # the pointed-to round can be expired between readlink and open: re-read
                target = read_pointer(self.kv_dir)
                if target is None:
                    return self._db is not None
                if target == self._round and not force:
                    return True
                try:
                    db = _open_read_only(self.kv_dir / _round_name(target) / "db", self.cache_bytes)
                except Exception as err:
                    logger.warning("KV reader: cannot open round %d yet (%s); retrying", target, err)
                    time.sleep(0.01)
                    continue
                # The old handle is not closed explicitly: a concurrent call may still be using it; it
                # closes when the last reference goes.
                self._db, self._round = db, target
                return True
            return self._db is not None

    def _handle(self) -> Rdict:
        now = time.monotonic()
        if now - self._last_check >= self.check_interval_s:
            self._last_check = now
            try:  # one readlink (string path: no pathlib cost on the hot path); reopen only after a promotion
                moved = int(os.readlink(self._pointer)) != self._round
            except FileNotFoundError:
                moved = False
            if moved:
                self.refresh()
        db = self._db
        assert db is not None
        return db

    def get_key(self, key: bytes) -> bytes | None:
        """Raw lookup: value bytes for raw key bytes, ``None`` when absent."""
        return self._handle().get(_key_bytes(key))

    def multi_get(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """Raw batched lookup; every answer comes from the same version."""
        if not keys:
            return []
        return self._handle().get([_key_bytes(k) for k in keys])

    def get_value(self, csid: str, recent_categories: Iterable[str]) -> KVValue | None:
        data = self.get_key(kv_key(csid, recent_categories))
        return None if data is None else decode_value(data)

    def get(self, csid: str, recent_categories: Iterable[str]) -> list[dict[str, Any]]:
        """``[{"category", "score"}, ...]`` in C_align order for a group CSID and recent categories; ``[]`` if absent."""
        value = self.get_value(csid, recent_categories)
        return [] if value is None else value.as_list()

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
            self._db, self._round = None, None

    def __enter__(self) -> KVReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
