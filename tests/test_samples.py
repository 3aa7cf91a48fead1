import pytest

from tumormap.samples import SampleSheetError, he_only_samples, paired_samples, read_sample_sheet

HEADER = "sample\the\tihc\tpatient\tpurity\toffset_x\toffset_y\n"


def write(tmp_path, text):
    path = tmp_path / "samples.tsv"
    path.write_text(text)
    return path


def test_reads_pairs_and_he_only_rows(tmp_path):
    sheet = read_sample_sheet(write(tmp_path, HEADER + "a\ta_he.svs\ta_ki67.svs\tP1\t0.3\t5\t-2\n"
                                                       "b\tb_he.svs\t\t\t\t\t\n"))
    assert list(sheet.index) == ["a", "b"]
    assert paired_samples(sheet) == ["a"] and he_only_samples(sheet) == ["b"]
    assert sheet.at["a", "offset_x"] == 5 and sheet.at["a", "purity"] == pytest.approx(0.3)
    assert sheet.at["b", "patient"] == "b"  # a sample without patient is its own patient


@pytest.mark.parametrize("row, message", [
    ("a\ta.svs\tb.svs\tP\tlots\t0\t0\n", "row 2 (sample 'a'): column 'purity' is not a number: 'lots'"),
    ("a\ta.svs\tb.svs\tP\t1.5\t0\t0\n", "column 'purity' = 1.5 is out of range"),
    ("a\t\tb.svs\tP\t\t0\t0\n", "row 2 (sample 'a'): column 'he' is empty"),
    ("a/b\ta.svs\tb.svs\tP\t\t0\t0\n", "column 'sample' must not contain"),
])
def test_bad_rows_name_row_and_column(tmp_path, row, message):
    with pytest.raises(SampleSheetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_sample_sheet(write(tmp_path, HEADER + row))


def test_missing_column_and_duplicates(tmp_path):
    with pytest.raises(SampleSheetError, match="missing required column 'he'"):
        read_sample_sheet(write(tmp_path, "sample\tihc\na\tb.svs\n"))
    with pytest.raises(SampleSheetError, match="duplicate sample name"):
        read_sample_sheet(write(tmp_path, "sample\the\na\tx.svs\na\ty.svs\n"))
    with pytest.raises(SampleSheetError, match="unknown column"):
        read_sample_sheet(write(tmp_path, "sample\the\tstain\na\tx.svs\tki67\n"))


def test_split_column_pins_and_is_checked(tmp_path):
    sheet = read_sample_sheet(write(tmp_path, "sample\the\tsplit\na\ta.svs\ttest\nb\tb.svs\t\n"))
    assert sheet.at["a", "split"] == "test" and not isinstance(sheet.at["b", "split"], str)
    with pytest.raises(SampleSheetError, match=r"row 2 \(sample 'a'\): column 'split' must be empty or one of"):
        read_sample_sheet(write(tmp_path, "sample\the\tsplit\na\ta.svs\ttesting\n"))
