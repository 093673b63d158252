"""The harness's CSV rows: stamped, appended under one header, a new column rewriting the file under both."""

import csv

from benchmarks.harness import stamp, write_csv

STAMP_KEYS = {"device", "torch", "triton", "transformers", "commit", "date"}


def read(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_stamp_names_device_versions_commit_and_date(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no git repository here: the commit comes from the environment, as on the device
    monkeypatch.setenv("EAGLE_OPS_COMMIT", "abc1234")
    stamped = stamp()
    assert set(stamped) == STAMP_KEYS
    assert stamped["commit"] == "abc1234"
    assert all(stamped.values()), stamped


def test_write_csv_appends_stamped_rows_under_one_header(tmp_path):
    path = tmp_path / "results" / "bench.csv"
    stamped = stamp()
    write_csv(path, [{"method": "a", "ms": 1.5} | stamped])
    write_csv(path, [{"method": "b", "ms": 2.5} | stamped, {"method": "c", "ms": 3.5} | stamped])
    rows = read(path)
    assert [r["method"] for r in rows] == ["a", "b", "c"]
    assert path.read_text().count("method,") == 1
    assert all(r["commit"] == stamped["commit"] and r["date"] == stamped["date"] for r in rows)


def test_write_csv_with_new_columns_keeps_the_old_rows(tmp_path):
    path = tmp_path / "bench.csv"
    write_csv(path, [{"method": "a", "ms": 1.5}])
    write_csv(path, [{"method": "b", "peak_mib": 40.0, "ms": 2.5}])
    with path.open(newline="") as f:
        assert next(csv.reader(f)) == ["method", "ms", "peak_mib"]
    assert read(path) == [
        {"method": "a", "ms": "1.5", "peak_mib": ""},
        {"method": "b", "ms": "2.5", "peak_mib": "40.0"},
    ]


def test_write_csv_of_no_rows_writes_nothing(tmp_path):
    write_csv(tmp_path / "bench.csv", [])
    assert not (tmp_path / "bench.csv").exists()
