"""The baselines report: where outputs diverge, and one table per batch size with prompt lookup n/a past B = 1."""

from benchmarks.baselines import BATCH_ONE_ONLY, COLUMNS, LOOKUP, STATIC, first_difference, markdown


def test_first_difference():
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2


def test_markdown_has_one_table_per_batch_and_reports_lookup_as_batch_one_only():
    blank = dict.fromkeys(COLUMNS, "")
    rows = [
        blank | {"batch": 1, "method": STATIC, "tokens_per_s": 689.7, "x_static_compile": 1.0, "sequences": 16}
        | {"diverging_sequences": 2, "first_divergence": 57, "peak_mib": 61.2},
        blank | {"batch": 16, "method": STATIC, "tokens_per_s": 9000.0, "x_static_compile": 1.0, "sequences": 16}
        | {"diverging_sequences": 0, "first_divergence": ""},
        blank | {"batch": 16, "method": LOOKUP, "note": BATCH_ONE_ONLY, "sequences": 16},
    ]  # fmt: skip
    text = markdown(rows, 128)
    assert text.count("| method |") == 2
    b1, b16 = text.split("B = 16")
    assert "| 689.7 | 1.00x |" in b1 and "2 of 16 (57)" in b1 and "61.2" in b1
    assert "0 of 16 |" in b16
    assert f"`{LOOKUP}` | {BATCH_ONE_ONLY} |" in b16
