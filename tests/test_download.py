"""Downloads against a real HTTP server on loopback (tests/http_server.py)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import requests

from http_server import SlideServer
from tumormap.download import ChecksumError, DownloadError, download, download_settings, part_path
from tumormap.sources import download_params, pair_record_files, remote_slides, resolve_sheet, write_resolved_sheet

REPO = Path(__file__).resolve().parents[1]
SIZE = 300_000  # bytes per test file


def payload(seed: int, size: int = SIZE) -> bytes:
    """Deterministic, non-repeating bytes (so a wrong offset changes the md5)."""
    out, block = bytearray(), hashlib.sha256(str(seed).encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:size])


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


FAST = dict(timeout_s=2.0, retries=2, backoff_s=0.05, chunk_bytes=16_384, progress=True,
            progress_interval_s=0.0)


@pytest.fixture
def server():
    with SlideServer(stall_s=5.0) as srv:
        srv.add_file("S1_HE.svs", payload(1))
        srv.add_file("S1_Ki67.svs", payload(2))
        yield srv


@pytest.mark.timeout(20)
def test_full_download_verified(server, tmp_path, caplog):
    dest = tmp_path / "S1" / "S1_HE.svs"
    caplog.set_level("INFO", logger="tumormap")
    download(server.file_url("S1_HE.svs"), dest, md5=md5(payload(1)), size=SIZE, sample="S1", stain="he", **FAST)
    assert dest.read_bytes() == payload(1)
    assert not part_path(dest).exists()
    assert [r["range"] for r in server.requests_for("S1_HE.svs")] == [None]
    assert any("S1" in r.message and "/s" in r.message for r in caplog.records), "no tqdm progress line in the log"
    assert any("md5" in r.message and "verified" in r.message for r in caplog.records)


@pytest.mark.timeout(20)
def test_resume_after_dropped_connection(server, tmp_path):
    server.set_fault("S1_HE.svs", "drop_once")
    dest = tmp_path / "S1_HE.svs"
    download(server.file_url("S1_HE.svs"), dest, md5=md5(payload(1)), sample="S1", stain="he", **FAST)
    assert dest.read_bytes() == payload(1)
    reqs = server.requests_for("S1_HE.svs")
    assert len(reqs) == 2
    assert reqs[0]["range"] is None and 0 < reqs[0]["sent"] < SIZE
    # resumes from the last chunk written (the chunk in flight at the drop is lost)
    resumed_at = int(reqs[1]["range"].removeprefix("bytes=").removesuffix("-"))
    assert reqs[0]["sent"] - FAST["chunk_bytes"] < resumed_at <= reqs[0]["sent"]
    assert reqs[1]["status"] == 206 and reqs[1]["sent"] == SIZE - resumed_at
    assert sum(r["sent"] for r in reqs) < 2 * SIZE


@pytest.mark.timeout(20)
def test_resume_across_calls_keeps_partial_file(server, tmp_path):
    """A job that gives up keeps its partial file; the next job resumes from it."""
    server.set_fault("S1_HE.svs", "truncate")
    dest = tmp_path / "S1_HE.svs"
    with pytest.raises(DownloadError, match="truncated"):
        download(server.file_url("S1_HE.svs"), dest, md5=md5(payload(1)), sample="S1", stain="he",
                 **{**FAST, "retries": 0})
    kept = part_path(dest).stat().st_size
    assert 0 < kept < SIZE and not dest.exists()
    server.set_fault("S1_HE.svs", None)
    download(server.file_url("S1_HE.svs"), dest, md5=md5(payload(1)), sample="S1", stain="he", **FAST)
    assert dest.read_bytes() == payload(1)
    assert server.requests_for("S1_HE.svs")[-1]["range"] == f"bytes={kept}-"


@pytest.mark.timeout(20)
def test_checksum_mismatch_leaves_nothing(server, tmp_path):
    server.set_fault("S1_HE.svs", "wrong_bytes")
    dest = tmp_path / "S1_HE.svs"
    url = server.file_url("S1_HE.svs")
    with pytest.raises(ChecksumError) as err:
        download(url, dest, md5=md5(payload(1)), sample="S1", stain="he", **FAST)
    message = str(err.value)
    assert "checksum mismatch" in message and "'S1'" in message and "'he'" in message and url in message
    assert md5(payload(1)) in message
    assert not dest.exists() and not part_path(dest).exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.timeout(20)
def test_404_names_sample_and_url(server, tmp_path):
    url = server.file_url("missing.svs")
    dest = tmp_path / "missing.svs"
    with pytest.raises(DownloadError) as err:
        download(url, dest, sample="S7", stain="ihc", **FAST)
    assert "404" in str(err.value) and "'S7'" in str(err.value) and "'ihc'" in str(err.value)
    assert url in str(err.value)
    assert len(server.requests_for("missing.svs")) == 1, "a 404 must not be retried"
    assert not dest.exists()


@pytest.mark.timeout(20)
def test_truncated_body_fails_after_retries(server, tmp_path):
    server.set_fault("S1_Ki67.svs", "truncate")
    url = server.file_url("S1_Ki67.svs")
    dest = tmp_path / "S1_Ki67.svs"
    with pytest.raises(DownloadError) as err:
        download(url, dest, md5=md5(payload(2)), sample="S1", stain="ihc", **FAST)
    message = str(err.value)
    assert "truncated" in message and "'S1'" in message and url in message
    assert f"after {FAST['retries'] + 1} attempts" in message
    assert not dest.exists()
    reqs = server.requests_for("S1_Ki67.svs")
    assert len(reqs) == FAST["retries"] + 1
    assert all(r["range"] for r in reqs[1:]), "retries after a truncation must resume"


@pytest.mark.timeout(20)
def test_stalling_server_times_out(server, tmp_path):
    server.set_fault("S1_HE.svs", "stall")  # sleeps 5 s mid-body
    url = server.file_url("S1_HE.svs")
    dest = tmp_path / "S1_HE.svs"
    settings = download_settings({"timeout_s": 0.5, "retries": 1, "backoff_s": 0.05})
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        download(url, dest, md5=md5(payload(1)), sample="S1", stain="he", progress=False, **{
            k: v for k, v in settings.items() if k != "progress_interval_s"})
    elapsed = time.monotonic() - start
    assert "stalled" in str(err.value) and "0.5 s" in str(err.value) and url in str(err.value)
    assert elapsed < 3.5, f"the stall was not cut by the 0.5 s timeout ({elapsed:.1f} s)"
    assert not dest.exists()


@pytest.mark.timeout(20)
def test_server_error_retried(server, tmp_path):
    server.set_fault("S1_HE.svs", "error_once")
    dest = tmp_path / "S1_HE.svs"
    download(server.file_url("S1_HE.svs"), dest, md5=md5(payload(1)), sample="S1", stain="he", **FAST)
    assert dest.read_bytes() == payload(1)
    assert [r["status"] for r in server.requests_for("S1_HE.svs")] == [500, 200]


@pytest.mark.timeout(20)
def test_connection_refused_is_retried_then_named(tmp_path):
    with SlideServer() as srv:
        url = srv.file_url("gone.svs")
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        download(url, tmp_path / "gone.svs", sample="S2", stain="he", **{**FAST, "retries": 2})
    assert "after 3 attempts" in str(err.value) and "connection error" in str(err.value)
    assert time.monotonic() - start >= 0.05 + 0.1  # backoff 0.05, then 0.1


def zenodo_server(srv: SlideServer, record: int = 4242) -> None:
    names = ["S01_HE.tiff", "S01_Ki67.tiff", "S02_HE.tiff", "S02_Ki67.tiff", "S03_HE.tiff", "README.md"]
    for seed, name in enumerate(names, start=10):
        srv.add_file(name, payload(seed, 50_000))
    srv.add_record(record, names)


ZENODO_CFG = {"pattern": r"(?P<sample>S\d+)_(?P<stain>HE|Ki67)\.tiff", "stains": {"he": "HE", "ihc": "Ki67"}}


@pytest.mark.timeout(30)
def test_zenodo_record_resolution_and_download(tmp_path):
    resources = tmp_path / "resources"
    with SlideServer() as srv:
        zenodo_server(srv)
        cfg = {"zenodo_api": srv.api_url, "zenodo": {"record": 4242, **ZENODO_CFG}}
        sheet = resolve_sheet(None, cfg, str(resources))
        assert list(sheet["sample"]) == ["S01", "S02"]  # S03 has no Ki67; README does not match
        row = sheet.set_index("sample").loc["S02"]
        assert row["he"] == str(resources / "downloads" / "S02" / "S02_HE.tiff")
        assert row["ihc"] == str(resources / "downloads" / "S02" / "S02_Ki67.tiff")
        assert row["he_source"] == "zenodo:4242/S02_HE.tiff"
        assert row["he_url"] == srv.record_file_url(4242, "S02_HE.tiff")
        assert row["ihc_md5"] == md5(srv.files["S02_Ki67.tiff"])
        assert row["ihc_size"] == 50_000
        assert (resources / "zenodo_4242.json").exists()
        api_calls = [r for r in srv.requests if r["path"] == "/api/records/4242"]
        assert len(api_calls) == 1

        # the rule's lookup and the download itself
        samples = sheet.set_index("sample", drop=False)
        for path in remote_slides(samples):
            sample, filename = Path(path).parts[-2:]
            p = download_params(samples, sample, filename)
            download(p["url"], path, md5=p["md5"], size=p["size"], sample=sample, stain=p["stain"], **FAST)
            assert md5(Path(path).read_bytes()) == p["md5"]
        assert len(remote_slides(samples)) == 4

        out = tmp_path / "results" / "samples_resolved.tsv"
        write_resolved_sheet(samples, out)
        back = pd.read_csv(out, sep="\t")
        assert list(back["sample"]) == ["S01", "S02"]
        assert list(back["he_md5"]) == list(sheet["he_md5"])
        assert list(back.columns[:3]) == ["sample", "he", "ihc"]

    # the server is gone: a second resolution (DAG rebuild) reads the cached record
    again = resolve_sheet(None, cfg, str(resources))
    pd.testing.assert_frame_equal(again, sheet)


@pytest.mark.timeout(30)
def test_zenodo_sheet_selects_and_annotates(tmp_path):
    with SlideServer() as srv:
        zenodo_server(srv)
        cfg = {"zenodo_api": srv.api_url, "zenodo": {"record": 4242, **ZENODO_CFG}}
        local_he = tmp_path / "P9_he.svs"
        local_he.write_bytes(b"x")
        sheet = pd.DataFrame({"sample": ["S02", "P9"], "he": [None, str(local_he)], "purity": [0.3, None]})
        out = resolve_sheet(sheet, cfg, str(tmp_path))
        assert list(out["sample"]) == ["S02", "P9"] and out.loc[0, "purity"] == 0.3
        assert out.loc[0, "ihc_source"] == "zenodo:4242/S02_Ki67.tiff"
        # P9 is not in the record: its own H&E, no IHC (prediction only)
        assert out.loc[1, "he"] == str(local_he) and out.loc[1, "ihc"] is None and out.loc[1, "ihc_url"] is None
        with pytest.raises(ValueError, match=r"row 2 \(sample 'S03'\), column 'he'.*no pair"):
            resolve_sheet(pd.DataFrame({"sample": ["S03"]}), cfg, str(tmp_path))
        # a zenodo:RECORD/FILE cell without a record in the config, with a wrong md5 in the sheet
        bad = pd.DataFrame({"sample": ["X"], "he": ["zenodo:4242/S01_HE.tiff"], "ihc": ["zenodo:4242/S01_Ki67.tiff"],
                            "he_md5": ["0" * 32]})
        with pytest.raises(ValueError, match=r"row 2 \(sample 'X'\), column 'he'.*differs from Zenodo"):
            resolve_sheet(bad, {"zenodo_api": srv.api_url}, str(tmp_path))
        with pytest.raises(ValueError, match=r"column 'ihc'.*no file 'nope.tiff'"):
            resolve_sheet(bad.assign(he_md5=None, ihc="zenodo:4242/nope.tiff"), {"zenodo_api": srv.api_url},
                          str(tmp_path))


@pytest.mark.timeout(20)
def test_local_paths_untouched_and_offline(tmp_path, monkeypatch):
    he, ihc = tmp_path / "a_he.svs", tmp_path / "a_ihc.svs"
    he.write_bytes(b"he"), ihc.write_bytes(b"ihc")
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (he, ihc)}

    def no_network(*args, **kwargs):
        raise AssertionError("resolve_sheet touched the network for a local-only sheet")

    monkeypatch.setattr(requests.Session, "send", no_network)
    sheet = pd.DataFrame({"sample": ["A", "B"], "he": [str(he), str(he)], "ihc": [str(ihc), None],
                          "purity": [0.4, None]})
    resources = tmp_path / "resources"
    out = resolve_sheet(sheet, {"zenodo_api": "http://127.0.0.1:9/api"}, str(resources))
    assert out.loc[0, "he"] == str(he) and out.loc[0, "ihc"] == str(ihc)
    assert out.loc[0, "he_url"] is None and out.loc[0, "ihc_source"] == str(ihc)
    assert out.loc[0, "purity"] == 0.4
    assert out.loc[1, "ihc"] is None and out.loc[1, "ihc_source"] is None  # H&E only
    assert remote_slides(out) == []
    assert not resources.exists()
    assert before == {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (he, ihc)}


@pytest.mark.parametrize("change, message", [
    ({"he": [""]}, r"row 3 \(sample 'B'\), column 'he': missing value"),
    ({"ihc_md5": ["xyz"]}, r"row 3 \(sample 'B'\), column 'ihc_md5': not a 32-digit hex md5"),
    ({"he": ["zenodo:abc/x.svs"]}, r"row 3 \(sample 'B'\), column 'he': expected zenodo:RECORD/FILENAME"),
    ({"sample": ["A", "A"]}, r"row 3, column 'sample': 'A' repeats row 2"),
    ({"sample": ["A", "B/C"]}, r"row 3 \(sample 'B/C'\), column 'sample'"),
    ({"ihc": ["missing.svs"]}, r"row 3 \(sample 'B'\), column 'ihc': local file not found: missing.svs"),
    ({"ihc": ["https://example.org/dir/S_HE.svs"]}, r"row 3 \(sample 'B'\): columns 'he' and 'ihc'"),
    ({"ihc": [""], "ihc_md5": ["a" * 32]}, r"row 3 \(sample 'B'\), column 'ihc': empty, but 'ihc_md5'"),
    ({"sample": ["A", "B.1"]}, r"row 3 \(sample 'B.1'\), column 'sample'"),
])
@pytest.mark.timeout(10)
def test_invalid_sheet_values(tmp_path, monkeypatch, change, message):
    monkeypatch.chdir(tmp_path)
    for name in ("a_he.svs", "a_ihc.svs"):
        Path(name).write_bytes(b"x")
    sheet = pd.DataFrame({"sample": ["A", "B"], "he": ["a_he.svs", "https://example.org/S_HE.svs"],
                          "ihc": ["a_ihc.svs", "a_ihc.svs"], "ihc_md5": [None, None]})
    for column, values in change.items():
        sheet[column] = values if len(values) == 2 else [sheet[column][0], values[0]]
    with pytest.raises(ValueError, match=message):
        resolve_sheet(sheet, {}, "resources")


def test_url_cell_keeps_file_name(tmp_path):
    (tmp_path / "l.svs").write_bytes(b"x")
    sheet = pd.DataFrame({"sample": ["S"], "he": ["https://host.example/a/b/Slide%2001.ndpi?download=1"],
                          "ihc": [str(tmp_path / "l.svs")], "he_md5": ["A" * 32]})
    out = resolve_sheet(sheet, None, "res")
    assert out.loc[0, "he"] == os.path.join("res", "downloads", "S", "Slide 01.ndpi")
    assert out.loc[0, "he_md5"] == "a" * 32 and out.loc[0, "he_url"].startswith("https://host.example/")


@pytest.mark.timeout(60)
def test_snakemake_rule_downloads_with_resource_cap(tmp_path):
    """rules/download.smk in a minimal workflow: downloads, log with progress, resolved sheet."""
    with SlideServer(delay_s=0.4) as srv:
        zenodo_server(srv)
        srv.set_fault("S01_HE.tiff", "drop_once")
        (tmp_path / "config.yaml").write_text(textwrap.dedent(f"""\
            resources_dir: resources
            download:
              zenodo_api: {srv.api_url}
              timeout_s: 5
              retries: 2
              backoff_s: 0.05
              progress_interval_s: 0
              chunk_mb: 0.004
              job_retries: 0
              zenodo:
                record: 4242
                pattern: '(?P<sample>S\\d+)_(?P<stain>HE|Ki67)\\.tiff'
                stains: {{he: HE, ihc: Ki67}}
            """))
        (tmp_path / "Snakefile").write_text(textwrap.dedent(f"""\
            import pandas as pd
            from tumormap.sources import resolve_sheet, remote_slides
            configfile: "config.yaml"
            samples = resolve_sheet(None, config["download"], config["resources_dir"]).set_index("sample", drop=False)
            include: "{REPO / 'rules' / 'download.smk'}"
            rule all:
                input: remote_slides(samples), "results/samples_resolved.tsv"
            """))
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        proc = subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--resources", "downloads=1",
                               "--quiet", "rules"], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=50)
        assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("S01_HE.tiff", "S01_Ki67.tiff", "S02_HE.tiff", "S02_Ki67.tiff"):
        sample = name.split("_")[0]
        path = tmp_path / "resources" / "downloads" / sample / name
        assert md5(path.read_bytes()) == md5(srv.files[name])
        log = (tmp_path / "logs" / "download" / sample / f"{name}.log").read_text()
        assert "verified" in log and "B/s" in log, log
    assert "bytes=" in str([r["range"] for r in srv.requests_for("S01_HE.tiff")])
    resolved = pd.read_csv(tmp_path / "results" / "samples_resolved.tsv", sep="\t")
    assert list(resolved["sample"]) == ["S01", "S02"]
    assert len(srv.requests_for("S01_HE.tiff")) == 2
    # downloads=1 with 2 cores: no two file transfers overlapped in time on the server
    spans = sorted((r["t0"], r["t1"]) for r in srv.requests if r["name"])
    assert len(spans) == 5
    assert all(end <= nxt_start for (_, end), (nxt_start, _) in zip(spans, spans[1:])), spans


@pytest.mark.timeout(30)
def test_zenodo_pattern_patient_group_sets_patient(tmp_path):
    """`(?P<patient>...)` in the pattern: both slides of a sample give its patient; a sheet row keeps its own."""
    names = ["C7-1_HE.tiff", "C7-1_Ki67.tiff", "C7-2_HE.tiff", "C7-2_Ki67.tiff", "C9-1_HE.tiff", "C9-1_Ki67.tiff"]
    pattern = r"(?P<sample>(?P<patient>C\d+)-\d)_(?P<stain>HE|Ki67)\.tiff"
    stains = {"he": "HE", "ihc": "Ki67"}
    with SlideServer() as srv:
        for seed, name in enumerate(names, start=30):
            srv.add_file(name, payload(seed, 1000))
        srv.add_record(77, names)
        cfg = {"zenodo_api": srv.api_url, "zenodo": {"record": 77, "pattern": pattern, "stains": stains}}
        sheet = resolve_sheet(None, cfg, str(tmp_path)).set_index("sample")
        assert sheet["patient"].to_dict() == {"C7-1": "C7", "C7-2": "C7", "C9-1": "C9"}
        # a sheet selecting samples: a blank patient (the sheet reader fills in the sample) takes the group
        selected = pd.DataFrame({"sample": ["C7-2", "C9-1"], "patient": ["C7-2", "mine"]})
        out = resolve_sheet(selected, cfg, str(tmp_path)).set_index("sample")
        assert out["patient"].to_dict() == {"C7-2": "C7", "C9-1": "mine"}
        # exclude works on record samples too
        assert list(resolve_sheet(None, cfg, str(tmp_path), exclude=["C7-1"])["sample"]) == ["C7-2", "C9-1"]
    # the split then keeps both C7 samples together
    from tumormap.split import split_samples

    split = split_samples(sheet.reset_index()[["sample", "patient"]], {"train": 0.5, "val": 0.25, "test": 0.25},
                          seed=0, require=())
    assert split.groupby("patient")["split"].nunique().max() == 1
    with pytest.raises(ValueError, match="two patients"):
        pair_record_files({"A_p1_HE.tiff": {}, "A_p2_Ki67.tiff": {}},
                          r"(?P<sample>[A-Z])_(?P<patient>p\d)_(?P<stain>HE|Ki67)\.tiff", stains, "77")
