"""Versioned KV tables for serving: the key contract (keys.py) and staged, promoted rocksdict versions (kv.py).

Imports nothing from ``coea`` or ``loops``.
"""

from storage.keys import DEFAULT_CSID, canonical_recent, csid_to_str, kv_key, short_hash
from storage.kv import (
    KVError,
    KVIntegrityError,
    KVNotFoundError,
    KVReader,
    KVStore,
    KVValue,
    NoCurrentVersionError,
    SstRange,
    StagedTable,
    decode_value,
    encode_value,
    read_pointer,
    table_checksum,
    write_sst_file,
    write_sst_ranges,
)

__all__ = [
    "DEFAULT_CSID",
    "KVError",
    "KVIntegrityError",
    "KVNotFoundError",
    "KVReader",
    "KVStore",
    "KVValue",
    "NoCurrentVersionError",
    "SstRange",
    "StagedTable",
    "canonical_recent",
    "csid_to_str",
    "decode_value",
    "encode_value",
    "kv_key",
    "read_pointer",
    "short_hash",
    "table_checksum",
    "write_sst_file",
    "write_sst_ranges",
]
