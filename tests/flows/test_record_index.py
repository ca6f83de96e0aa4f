"""The record index as a run holds it: packed where it can be, always read back exactly."""

from __future__ import annotations

import hashlib
import tracemalloc

from prefect_ig1.flows.record_index import IndexEntry, RecordIndex, load_index, save_index
from prefect_ig1.sandbox.local_s3 import LocalS3
from tests.helpers import s3_of

MD5 = hashlib.md5(b"source").hexdigest()
RECORD = hashlib.md5(b"record").hexdigest()

ENTRIES = {
    "described.png": IndexEntry(MD5, RECORD, True),
    "failed, to retry.png": IndexEntry(MD5, RECORD, False),
    "lasting error.png": IndexEntry(MD5, RECORD, False, "settings-digest"),
    "multipart.png": IndexEntry(MD5 + "-3", RECORD, True),
    "upper case.png": IndexEntry(MD5.upper(), RECORD, True),
    "quoted.png": IndexEntry(f'"{MD5}"', RECORD, True),
    "another store.png": IndexEntry("W/abc", "", True),
    "short hex.png": IndexEntry(MD5[:31], RECORD, True),
}


def test_every_entry_reads_back_as_it_was_set() -> None:
    index = RecordIndex()
    for key, entry in ENTRIES.items():
        index[key] = entry
    assert index == ENTRIES and list(index) == list(ENTRIES) and len(index) == len(ENTRIES)
    assert all(type(index[key]) is IndexEntry for key in index)
    assert index.get("not there") is None and "described.png" in index
    index["described.png"] = IndexEntry(RECORD, MD5, False)  # replaced, not added
    assert index["described.png"] == IndexEntry(RECORD, MD5, False) and len(index) == 8
    del index["quoted.png"]
    assert "quoted.png" not in index and len(index) == 7


def test_an_index_of_md5_etags_is_held_in_a_third_of_the_memory() -> None:
    """What a run at 100,000 images keeps until its end; a plain dict holds ~280 bytes an
    entry (measured), the packed index ~100."""
    keys = [f"in/{i:06d}.png" for i in range(10_000)]  # made before: not counted
    tracemalloc.start()
    try:
        index = RecordIndex()
        for key in keys:
            index[key] = IndexEntry(hashlib.md5(key.encode()).hexdigest(),
                                    hashlib.md5(key.encode() + b"r").hexdigest(), True)
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held / len(keys) < 140, f"{held / len(keys):.0f} bytes an entry"
    assert index[keys[5]].source_etag == hashlib.md5(keys[5].encode()).hexdigest()


def test_the_saved_index_loads_back_whole(local_s3: LocalS3, bucket: str) -> None:
    index = RecordIndex()
    for key, entry in ENTRIES.items():
        index[key] = entry
    save_index(s3_of(local_s3), bucket, "descriptions/", index)
    loaded = load_index(s3_of(local_s3), bucket, "descriptions/")
    assert isinstance(loaded, RecordIndex) and loaded == ENTRIES
