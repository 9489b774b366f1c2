from billing_pipeline.markdown import table


def test_table_escapes_cells_limits_rows_and_says_when_empty():
    text = table(["a", "b"], [(1, "x|y"), (None, "two\nlines"), (3, "c")], limit=2)
    assert text.splitlines() == [
        "| a | b |",
        "| --- | --- |",
        "| 1 | x/y |",
        "|  | two lines |",
        "| ... 1 more | |",
    ]
    assert table(["a"], [], empty="No findings.") == "No findings."
    assert table(["a"], []) == "| a |\n| --- |"
