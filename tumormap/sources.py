"""Where each slide comes from: local paths, http(s) URLs and Zenodo records.

The sample sheet's ``he`` / ``ihc`` cells may be a local path, an http(s) URL or
``zenodo:RECORD/FILENAME``; the config section ``download.zenodo`` may also name a
whole record and a regex that pairs its files into samples. :func:`resolve_sheet`
turns all of these into local paths the workflow reads, plus the URL and md5 the
``download_slide`` rule needs. Zenodo's API answer is cached per record in
``{resources_dir}/zenodo_{record}.json``, so rebuilding the DAG does not refetch it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd

from .io import atomic_path, write_json
from .logs import get_logger

log = get_logger("sources")

STAINS = ("he", "ihc")
DEFAULT_ZENODO_API = "https://zenodo.org/api"
_MD5 = re.compile(r"^[0-9a-fA-F]{32}$")
_ZENODO_REF = re.compile(r"^zenodo:(\d+)/(.+)$")
_SAMPLE = re.compile(r"^[^/\\\s.]+$")  # as tumormap.samples: no '/', '\\', whitespace or '.'


def source_kind(value: str) -> str:
    """``'url'``, ``'zenodo'`` or ``'local'`` for a sheet cell."""
    lowered = value.lower()
    if lowered.startswith(("http://", "https://")):
        return "url"
    if lowered.startswith("zenodo:"):
        return "zenodo"
    return "local"


def resolve_sheet(samples: pd.DataFrame | None, download_cfg: dict | None, resources_dir: str,
                  exclude: list[str] | tuple[str, ...] = ()) -> pd.DataFrame:
    """Resolve every slide source to a local path; see the module docstring.

    Returns the sheet (``sample`` as a column, one row per sample) with, for each stain
    s: ``s`` the local path the workflow reads, ``s_source`` the original value,
    ``s_url`` (None for local files), ``s_md5`` (None where unknown) and ``s_size``
    (bytes, from Zenodo; None otherwise). ``he`` is required, ``ihc`` may be empty
    (prediction-only samples; all its columns are then None). Sheets with only local
    paths never touch the network. Raises ValueError naming the row (header = row 1)
    and column of a bad value. ``exclude``: sample names (of the sheet or the record) left
    out before anything is resolved; a name that is neither is an error.
    """
    cfg = download_cfg or {}
    zenodo_cfg = cfg.get("zenodo") or {}
    api = str(cfg.get("zenodo_api") or DEFAULT_ZENODO_API).rstrip("/")
    timeout_s = float(cfg.get("timeout_s", 60))
    records: dict[str, dict[str, dict]] = {}

    def files_of(record: str) -> dict[str, dict]:
        if record not in records:
            records[record] = record_files(fetch_zenodo_record(record, api, resources_dir, timeout_s), record)
        return records[record]

    sheet = _check_columns(samples)
    if zenodo_cfg.get("record") not in (None, ""):
        sheet = _merge_record(sheet, zenodo_cfg, files_of(str(zenodo_cfg["record"])))
    if exclude:
        from .samples import check_exclude

        names = check_exclude(exclude, [_cell(v) for v in sheet["sample"]])
        sheet = sheet[~sheet["sample"].map(_cell).isin(names)].reset_index(drop=True)
        log.info("exclude: %s left out", ", ".join(names))

    if sheet.empty:
        raise ValueError("sample sheet: no samples (the sheet is empty and no Zenodo record is configured)")
    rows = []
    seen: dict[str, int] = {}
    for i, row in enumerate(sheet.to_dict("records"), start=2):
        sample = _cell(row.get("sample"))
        where = f"sample sheet row {i}"
        if not sample:
            raise ValueError(f"{where}, column 'sample': missing value")
        if not _SAMPLE.match(sample):
            raise ValueError(f"{where} (sample {sample!r}), column 'sample': must not contain '/', '\\', '.' "
                             "or spaces (it names files and directories)")
        if sample in seen:
            raise ValueError(f"{where}, column 'sample': {sample!r} repeats row {seen[sample]}")
        seen[sample] = i
        where = f"sample sheet row {i} (sample {sample!r})"
        for stain in STAINS:
            row.update(_resolve_cell(row, stain, where, sample, resources_dir, files_of))
        if row["ihc"] is not None and Path(row["he"]) == Path(row["ihc"]):
            raise ValueError(f"{where}: columns 'he' and 'ihc' resolve to the same file {row['he']}")
        rows.append(row)

    out = pd.DataFrame(rows)
    extra = [f"{s}_{k}" for s in STAINS for k in ("source", "url", "md5", "size")]
    first = ["sample", *STAINS]
    rest = [c for c in out.columns if c not in first and c not in extra]
    out = out[first + rest + extra]
    for column in [*STAINS, *extra]:
        values = out[column].astype(object).where(out[column].notna(), None)
        out[column] = values.map(lambda v: int(v) if v is not None else None) if column.endswith("_size") else values
    n_remote = int(sum(out[f"{s}_url"].notna().sum() for s in STAINS))
    n_slides = int(out["he"].notna().sum() + out["ihc"].notna().sum())
    log.info("sample sheet: %d samples, %d slides to download, %d local", len(out), n_remote, n_slides - n_remote)
    return out


def download_params(samples: pd.DataFrame, sample: str, filename: str) -> dict:
    """``url``, ``md5``, ``size`` and ``stain`` of the slide ``downloads/{sample}/{filename}``.

    ``samples`` is the resolved sheet, indexed by sample or with a ``sample`` column.
    """
    table = samples.set_index("sample", drop=False) if "sample" in samples.columns else samples
    if sample not in table.index:
        raise ValueError(f"download: sample {sample!r} is not in the resolved sample sheet")
    row = table.loc[sample]
    for stain in STAINS:
        url = row.get(f"{stain}_url")
        if _cell(url) and Path(str(row[stain])).name == filename:
            md5, size = row.get(f"{stain}_md5"), row.get(f"{stain}_size")
            return {"url": str(url), "stain": stain, "md5": _cell(md5) or None,
                    "size": int(size) if _cell(size) else None}
    raise ValueError(f"download: sample {sample!r} has no remote slide named {filename!r}")


def remote_slides(samples: pd.DataFrame) -> list[str]:
    """Local paths of every slide that must be downloaded (targets of ``download_slide``)."""
    return [str(path) for stain in STAINS for path, url in zip(samples[stain], samples[f"{stain}_url"])
            if _cell(url)]


def write_resolved_sheet(samples: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write the resolved sheet as TSV (atomically), ``sample`` first."""
    table = samples.reset_index(drop="sample" in samples.columns)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False)


def sheet_digest(samples: pd.DataFrame) -> str:
    """A short digest of the resolved sheet, so a rule reruns when the sheet changes."""
    text = samples.reset_index(drop="sample" in samples.columns).to_csv(sep="\t", index=False)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


# --- Zenodo -------------------------------------------------------------------------


def fetch_zenodo_record(record: str | int, api: str, resources_dir: str, timeout_s: float = 60,
                        retries: int = 3, backoff_s: float = 2.0) -> dict:
    """The JSON of ``GET {api}/records/{record}``, cached in ``{resources_dir}/zenodo_{record}.json``.

    Delete the cache file to refetch (e.g. after a new version of the record).
    """
    import requests

    cache = Path(resources_dir) / f"zenodo_{record}.json"
    if cache.exists():
        try:
            return json.loads(cache.read_text())
        except json.JSONDecodeError:
            log.warning("Zenodo record %s: unreadable cache %s; fetching again", record, cache)
    url = f"{api.rstrip('/')}/records/{record}"
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff_s * 2 ** (attempt - 1))
        try:
            response = requests.get(url, timeout=(timeout_s, timeout_s), headers={"Accept": "application/json"})
        except requests.exceptions.RequestException as exc:
            last = f"{type(exc).__name__}: {exc}"
            continue
        if response.status_code in (408, 429) or response.status_code >= 500:
            last = f"HTTP {response.status_code}"
            continue
        if response.status_code == 404:
            raise ValueError(f"Zenodo record {record}: not found (HTTP 404): {url}")
        if response.status_code != 200:
            raise ValueError(f"Zenodo record {record}: HTTP {response.status_code} {response.reason}: {url}")
        try:
            data = response.json()
        except ValueError as exc:
            raise ValueError(f"Zenodo record {record}: answer is not JSON: {url}") from exc
        record_files(data, str(record))  # validate before caching
        write_json(data, cache)
        log.info("Zenodo record %s: %d files listed, cached in %s", record, len(record_files(data, str(record))),
                 cache)
        return data
    raise ValueError(f"Zenodo record {record}: cannot fetch {url} after {retries + 1} attempts ({last})")


def record_files(data: dict, record: str) -> dict[str, dict]:
    """``{key: {url, md5, size}}`` from a Zenodo record JSON.

    Accepts ``files`` as a list (``/api/records/{id}``) or as ``{"entries": [...]}``
    (InvenioRDM's files endpoint); the URL is ``links.content`` or ``links.self``.
    """
    files = data.get("files")
    if isinstance(files, dict):
        files = files.get("entries")
        files = list(files.values()) if isinstance(files, dict) else files
    if not isinstance(files, list) or not files:
        raise ValueError(f"Zenodo record {record}: no files listed (restricted, empty, or not a record)")
    out = {}
    for entry in files:
        key = entry.get("key") or entry.get("filename")
        links = entry.get("links") or {}
        url = links.get("content") or links.get("self") or links.get("download")
        checksum = str(entry.get("checksum") or "")
        if not key or not url:
            raise ValueError(f"Zenodo record {record}: file entry without key or link: {entry}")
        md5 = checksum[4:] if checksum.startswith("md5:") else (checksum if _MD5.match(checksum) else None)
        size = entry.get("size", entry.get("filesize"))
        out[key] = {"url": url, "md5": md5.lower() if md5 else None, "size": int(size) if size is not None else None}
    return out


def pair_record_files(files: dict[str, dict], pattern: str, stains: dict, record: str) -> dict[str, dict[str, str]]:
    """``{sample: {stain: key}}`` from file keys matching ``pattern`` in full.

    ``pattern`` has named groups ``sample`` and ``stain``; ``stains`` maps each of
    ``he`` / ``ihc`` to the ``stain`` group value(s) (a string or a list) naming it.
    An optional named group ``patient`` gives each sample's patient (``"patient"`` in its
    dict; both files of a sample must agree). Files that do not match are ignored; samples
    missing a stain are left out (logged).
    """
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"download.zenodo.pattern: invalid regex {pattern!r}: {exc}") from exc
    if not {"sample", "stain"} <= set(regex.groupindex):
        raise ValueError(f"download.zenodo.pattern: needs named groups (?P<sample>...) and (?P<stain>...): {pattern!r}")
    lookup = {}
    for stain in STAINS:
        names = stains.get(stain)
        if not names:
            raise ValueError(f"download.zenodo.stains: give the file-name value for {stain!r}, e.g. {{he: HE, ihc: Ki67}}")
        for name in [names] if isinstance(names, str) else names:
            lookup[str(name)] = stain
    pairs: dict[str, dict[str, str]] = {}
    ignored = []
    for key in sorted(files):
        match = regex.fullmatch(key)
        if not match or match.group("stain") not in lookup:
            ignored.append(key)
            continue
        sample, stain = match.group("sample"), lookup[match.group("stain")]
        if stain in pairs.setdefault(sample, {}):
            raise ValueError(f"Zenodo record {record}: sample {sample!r} has two {stain} files: "
                             f"{pairs[sample][stain]!r} and {key!r}; tighten download.zenodo.pattern")
        pairs[sample][stain] = key
        if "patient" in regex.groupindex and match.group("patient"):
            patient = pairs[sample].setdefault("patient", match.group("patient"))
            if patient != match.group("patient"):
                raise ValueError(f"Zenodo record {record}: sample {sample!r} has files of two patients "
                                 f"({patient!r}, {match.group('patient')!r}): check the (?P<patient>...) group")
    if ignored:
        log.info("Zenodo record %s: %d files do not match the pattern, ignored: %s", record, len(ignored),
                 ", ".join(ignored[:10]) + (" ..." if len(ignored) > 10 else ""))
    incomplete = {s: {k: p[k] for k in STAINS if k in p} for s, p in pairs.items() if not set(STAINS) <= set(p)}
    for sample, found in incomplete.items():
        log.warning("Zenodo record %s: sample %r has only %s (%s); left out", record, sample,
                    "/".join(found), ", ".join(found.values()))
    complete = {s: p for s, p in pairs.items() if s not in incomplete}
    if not complete:
        raise ValueError(f"Zenodo record {record}: no file pairs match download.zenodo.pattern {pattern!r} "
                         f"with stains {stains}; file names are e.g. {', '.join(sorted(files)[:5])}")
    log.info("Zenodo record %s: %d H&E/IHC pairs", record, len(complete))
    return complete


# --- helpers ---------------------------------------------------------------------------


def _check_columns(samples: pd.DataFrame | None) -> pd.DataFrame:
    if samples is None:
        return pd.DataFrame(columns=["sample", *STAINS])
    sheet = samples.copy()
    if "sample" not in sheet.columns:
        if sheet.index.name == "sample":
            sheet = sheet.reset_index()
        else:
            raise ValueError("sample sheet: no 'sample' column")
    for stain in STAINS:
        if stain not in sheet.columns:
            sheet[stain] = None
    return sheet.reset_index(drop=True)


def _merge_record(sheet: pd.DataFrame, zenodo_cfg: dict, files: dict[str, dict]) -> pd.DataFrame:
    """Rows from the configured record; a non-empty sheet selects samples and adds columns.

    Blank ``he`` / ``ihc`` cells of the sheet are filled from the record's pair for that
    sample; cells the sheet fills itself are kept. A sample absent from the record must
    give ``he`` itself (and may leave ``ihc`` blank: prediction only).
    """
    record = str(zenodo_cfg["record"])
    pairs = pair_record_files(files, zenodo_cfg.get("pattern") or "", zenodo_cfg.get("stains") or {}, record)
    refs = {sample: {stain: f"zenodo:{record}/{found[stain]}" for stain in STAINS} for sample, found in pairs.items()}
    patients = {sample: found["patient"] for sample, found in pairs.items() if "patient" in found}
    if sheet.empty:
        rows = [{"sample": s, **refs[s], **({"patient": patients[s]} if s in patients else {})} for s in sorted(refs)]
        return pd.DataFrame(rows, columns=list(dict.fromkeys([*sheet.columns, "sample", *STAINS]
                                                             + (["patient"] if patients else []))))
    sheet = sheet.copy()
    if patients and "patient" not in sheet.columns:
        sheet["patient"] = None
    for i, row in sheet.iterrows():
        sample = _cell(row["sample"])
        if sample in patients and _cell(row["patient"]) in ("", sample):  # blank (the sheet reader fills the sample)
            sheet.at[i, "patient"] = patients[sample]
        for stain in STAINS:
            if _cell(row[stain]):
                continue  # the sheet names this slide itself
            if sample not in refs:
                if stain == "ihc":
                    continue  # H&E only: prediction
                raise ValueError(f"sample sheet row {i + 2} (sample {sample!r}), column {stain!r}: empty, and "
                                 f"Zenodo record {record} has no pair for this sample "
                                 f"(pairs: {', '.join(sorted(refs)[:8])}{' ...' if len(refs) > 8 else ''})")
            sheet.at[i, stain] = refs[sample][stain]
    return sheet


def _resolve_cell(row: dict, stain: str, where: str, sample: str, resources_dir: str, files_of) -> dict:
    value = _cell(row.get(stain))
    md5 = _cell(row.get(f"{stain}_md5")) or None
    if md5 and not _MD5.match(md5):
        raise ValueError(f"{where}, column '{stain}_md5': not a 32-digit hex md5: {md5!r}")
    where = f"{where}, column {stain!r}"
    if not value and stain == "ihc":
        if md5:
            raise ValueError(f"{where}: empty, but 'ihc_md5' is given")
        return {stain: None, f"{stain}_source": None, f"{stain}_url": None, f"{stain}_md5": None,
                f"{stain}_size": None}
    if not value:
        raise ValueError(f"{where}: missing value (a path, an http(s) URL or zenodo:RECORD/FILENAME)")
    md5 = md5.lower() if md5 else None
    kind = source_kind(value)
    size = None
    if kind == "local":
        path = value[len("file://"):] if value.startswith("file://") else value
        generated = Path(path).is_relative_to(Path(resources_dir) / "demo")  # made by the demo rules
        if not Path(path).is_file() and not generated:
            raise ValueError(f"{where}: local file not found: {path}")
        return {stain: path, f"{stain}_source": value, f"{stain}_url": None, f"{stain}_md5": md5,
                f"{stain}_size": None}
    if kind == "url":
        url = value
        filename = unquote(urlparse(url).path.rstrip("/").rsplit("/", 1)[-1])
        if not urlparse(url).netloc:
            raise ValueError(f"{where}: URL has no host: {url}")
    else:
        match = _ZENODO_REF.match(value)
        if not match:
            raise ValueError(f"{where}: expected zenodo:RECORD/FILENAME with a numeric record, got {value!r}")
        record, key = match.groups()
        files = files_of(record)
        if key not in files:
            raise ValueError(f"{where}: Zenodo record {record} has no file {key!r} "
                             f"(it has {', '.join(sorted(files)[:8])}{' ...' if len(files) > 8 else ''})")
        entry = files[key]
        if md5 and entry["md5"] and md5 != entry["md5"]:
            raise ValueError(f"{where}: '{stain}_md5' {md5} differs from Zenodo's md5 {entry['md5']} for {key!r}")
        url, md5, size = entry["url"], md5 or entry["md5"], entry["size"]
        filename = key.rsplit("/", 1)[-1]
    if not filename or filename.startswith(".") or "/" in filename:
        raise ValueError(f"{where}: cannot take a file name from {value!r}")
    local = str(Path(resources_dir) / "downloads" / sample / filename)
    return {stain: local, f"{stain}_source": value, f"{stain}_url": url, f"{stain}_md5": md5, f"{stain}_size": size}


def _cell(value) -> str:
    """A sheet cell as a stripped string; '' for empty / NaN / None."""
    if value is None:
        return ""
    try:
        if pd.isna(value):
            return ""
    except (TypeError, ValueError):
        pass
    return str(value).strip()
