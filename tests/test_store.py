"""Atomic writes and fingerprints."""
import os

import pandas as pd
import pytest

from datacull.errors import DatacullError
from datacull.store import (atomic_path, ensure_dir, fingerprint, is_fresh, parquet_config,
                            write_json_atomic, write_parquet_atomic)


def test_failed_write_leaves_old_file_and_no_temp(tmp_path):
    target = tmp_path / "out.json"
    write_json_atomic(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text().strip().startswith("{") and '"a": 1' in target.read_text()
    assert os.listdir(tmp_path) == ["out.json"]


def test_parquet_carries_fingerprint_and_config(tmp_path):
    path = write_parquet_atomic(tmp_path / "t.parquet", pd.DataFrame({"x": [1, 2]}), fp="abc", config={"k": 3})
    assert is_fresh(path, "abc") and not is_fresh(path, "abd") and not is_fresh(tmp_path / "none", "abc")
    assert parquet_config(path) == {"k": 3}


def test_fingerprint_is_order_insensitive_for_dicts_and_sensitive_to_values():
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint({"a": 1}) != fingerprint({"a": 2})


def test_ensure_dir_reports_unusable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DatacullError, match="cannot create directory"):
        ensure_dir(blocker / "sub")


def test_stacked_rows_index_like_the_concatenation():
    import numpy as np

    from datacull.rows import StackedRows

    parts = [np.arange(12.0).reshape(6, 2), np.arange(100, 106.0).reshape(3, 2), np.arange(200, 208.0).reshape(4, 2)]
    whole = np.concatenate(parts)
    rows = StackedRows(parts)
    assert rows.shape == whole.shape and len(rows) == 13
    np.testing.assert_array_equal(rows[2:11], whole[2:11])
    picks = np.array([12, 0, 7, 6, 5, -1])
    np.testing.assert_array_equal(rows[picks], whole[picks])
    np.testing.assert_array_equal(np.asarray(rows), whole)
