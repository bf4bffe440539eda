"""The prepare engine: a publisher's dataset → ``<out>/<name>/<split>/…`` + ``manifest.csv``.

``prepare_dataset`` streams the recipe's reader, decodes and transforms each
item in a ``multiprocessing`` pool (spawn-safe, chunked ``imap``; workers write
their PNGs themselves, so only small records cross the pipe) and writes::

    <out>/<name>/manifest.csv          # MANIFEST_COLUMNS + domain, pair, label
    <out>/<name>/.prepared.json        # fingerprint + report of the finished run
    <out>/<name>/<split>/<id>.png      # single-domain recipes
    <out>/<name>/<split>/<domain>/<id>.png   # paired recipes (A/B)

Soundness rules:

* **Atomic splits.** Files go to ``.<split>.tmp/`` and the folder is renamed
  to ``<split>/`` only when every item is done; a ``.tmp`` folder is never
  trusted as output.
* **Resume.** After each finished item the main process appends one JSON line
  to ``.progress.jsonl`` (append-only, fsynced every few items; its first line
  records the fingerprint). A rerun with the same fingerprint reuses an item
  when its journal line exists *and* every file it lists still hashes to the
  recorded sha256; everything else in the ``.tmp`` folders is deleted and
  redone. A torn last line is ignored. Quarantined items are journaled too.
* **Idempotence.** The fingerprint hashes the source *listing* (relative
  names, sizes, mtimes — not the bytes, which would cost a full read), the
  recipe name and the effective config. When ``.prepared.json`` holds the same
  fingerprint and the manifest and split folders exist, nothing is done.
* **Determinism.** The split of an item is its publisher split when the reader
  gives one, else a cut of the hash-*ranked* groups (``splits.split_by_name_hash``:
  groups ordered by ``sha256("<seed>:<group>")`` and cut at exact counts per
  split, largest remainder, no split empty once there are >= 3 groups). A first,
  cheap pass over the reader (names only, no pixels) collects the groups; the
  group id (a publisher file name, folder or patient, never an enumeration
  index) is hashed rather than its bytes, so the split is known before any byte
  is read and items of one group can be decoded by different workers. Counts
  are exact in groups (in items when groups are single images); the price is
  that adding images may move a few existing ones at the cut points. PNGs
  are written without metadata at a fixed compression level and the manifest
  is sorted, so the same input gives byte-identical files.
* **Bad input.** An item whose bytes cannot be read or decoded is quarantined
  (listed with the error in the report, not written); more than
  ``max_bad_fraction`` of them raises ``InputError`` with the list.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
import multiprocessing
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from neuralmark.components.data.datasets import DatasetRecipe, PrepareConfig, get_recipe
from neuralmark.components.data.manifest import MANIFEST_COLUMNS, SPLITS
from neuralmark.components.data.readers.archives import close_archives
from neuralmark.components.data.readers.base import DatasetReader, ItemError, SourceItem
from neuralmark.components.data.splits import split_by_name_hash
from neuralmark.components.errors import InputError
from neuralmark.components.files import atomic_file, atomic_write_bytes, atomic_write_text

#: bump when the output bytes or layout change for the same input
PREPARE_FORMAT_VERSION = 4
#: ``extra``: the item's JSON-encoded extra fields (e.g. ChestX-ray8 ``target_kind``,
#: so a manifest says plainly when its targets are a classical approximation)
PREPARED_COLUMNS = [*MANIFEST_COLUMNS, "domain", "pair", "label", "extra"]
PNG_COMPRESS_LEVEL = 6
JOURNAL = ".progress.jsonl"
MARKER = ".prepared.json"
#: fsync the journal after this many records (a lost record is just redone)
FSYNC_EVERY = 16

Progress = Callable[[int, int], None]
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class PrepareReport:
    """What one ``prepare_dataset`` call did.

    Attributes:
        dataset: recipe name.
        root: ``<out>/<name>``.
        manifest: path of ``manifest.csv``.
        fingerprint: hash of source listing + recipe + config.
        counts: rows per split and domain, ``{"train": {"image": 800}, ...}``.
        items: source items seen (after ``limit``).
        quarantined: ``{"item_id", "location", "error"}`` per unreadable item.
        reused: items taken from an interrupted run's journal.
        skipped: the output was already complete for this fingerprint.
        seconds: wall time of this call.
        images_per_second: items processed per second in this call.
        expectations: ``RecipeExpectations.to_dict()`` of this prepare (what the
            validation suite checks: domains/pairs, size, modes, label range, …).
    """

    dataset: str
    root: str
    manifest: str
    fingerprint: str
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    items: int = 0
    quarantined: list[dict[str, str]] = field(default_factory=list)
    reused: int = 0
    skipped: bool = False
    seconds: float = 0.0
    images_per_second: float = 0.0
    expectations: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field."""
        return asdict(self)


# -- config, fingerprint ------------------------------------------------------------------------


def effective_config(recipe: DatasetRecipe, config: PrepareConfig) -> PrepareConfig:
    """``config`` with the recipe's ``defaults`` for fields (and options) the user left unset.

    Raises:
        InputError: an option the recipe does not declare, or a ``size`` other than
            the recipe's ``fixed_size``.
    """
    unknown = sorted(k for k in config.options if k not in recipe.options)
    if unknown:
        raise InputError(f"dataset {recipe.name} has no option(s) {unknown}; expected one of "
                         f"{list(recipe.options) or 'none'}")
    fields = set(PrepareConfig.model_fields)
    values = {k: v for k, v in recipe.defaults.items() if k in fields}
    options = {k: v for k, v in recipe.defaults.items() if k not in fields}
    values.update(config.model_dump(exclude_unset=True))
    values["options"] = {**options, **config.options}
    effective = PrepareConfig(**values)
    if recipe.fixed_size is not None and effective.size != recipe.fixed_size:
        raise InputError(f"dataset {recipe.name} keeps the publisher's {recipe.fixed_size}×"
                         f"{recipe.fixed_size} pixels; expected size={recipe.fixed_size} or "
                         f"unset, found size={effective.size}")
    return effective


def _listing(source: Path) -> list[list[Any]]:
    """``[relative name, size, mtime_ns]`` of every file under ``source`` (or of the file)."""
    if source.is_file():
        st = source.stat()
        return [[source.name, st.st_size, st.st_mtime_ns]]
    out = []
    for path in sorted(source.rglob("*")):
        if path.is_file():
            st = path.stat()
            out.append([path.relative_to(source).as_posix(), st.st_size, st.st_mtime_ns])
    return out


def source_fingerprint(name: str, source: str | os.PathLike,
                       config: PrepareConfig | None = None) -> str:
    """Hash of what a prepare depends on: the source listing, the recipe and the config.

    Cheap (a directory walk, no file read), so pipelines compute it up front and
    hand it to the prepare step as an input: same fingerprint, cache hit.

    Args:
        name: recipe name.
        source: the archive or folder as published.
        config: prepare options (``None``: defaults).

    Returns:
        A sha256 hex digest.

    Raises:
        InputError: the recipe is unknown or ``source`` does not exist.
    """
    recipe = get_recipe(name)
    source = Path(source)
    if not source.exists():
        raise InputError(f"source {source} does not exist")
    cfg = effective_config(recipe, config or PrepareConfig())
    record = {"format": PREPARE_FORMAT_VERSION, "dataset": name,
              "config": cfg.model_dump(mode="json", exclude={"workers"}),
              "listing": _listing(source)}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


# -- splitting, naming ---------------------------------------------------------------------------


def _validate_fractions(fractions: tuple[float, float, float]) -> None:
    if any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise InputError(f"split fractions must be >= 0 and sum to 1, got {fractions}")


def _stream(reader: DatasetReader, source: Path, config: PrepareConfig) -> Iterator[SourceItem]:
    """The reader's items, cut at ``config.limit``."""
    items = reader.items(source)
    return itertools.islice(items, config.limit) if config.limit is not None else items


def plan_splits(reader: DatasetReader, source: Path, config: PrepareConfig) -> dict[str, str]:
    """``{group: split}`` for the items the reader leaves unsplit (exact counts, see module doc).

    One pass over the reader's item stream (after ``limit``) that keeps only group ids.
    """
    groups = {item.group or item.item_id for item in _stream(reader, source, config)
              if item.split is None}
    return split_by_name_hash(groups, config.fractions, config.seed)


def split_of(item: SourceItem, plan: dict[str, str]) -> str:
    """The item's split: its publisher split, else its group's in ``plan``."""
    if item.split is not None:
        if item.split not in SPLITS:
            raise InputError(f"{item.item_id}: publisher split {item.split!r} is not one of "
                             f"{list(SPLITS)}")
        return item.split
    group = item.group or item.item_id
    try:
        return plan[group]
    except KeyError:
        raise InputError(f"{item.item_id}: group {group!r} appeared after the split was "
                         "planned (the source changed during the prepare?)") from None


def file_stem(item_id: str) -> str:
    """A file-system-safe stem for ``item_id`` (``/`` and ``:`` become ``_``).

    An image extension on the id (``00000001_000.png``) is dropped: outputs are PNG.
    """
    item_id = re.sub(r"\.(png|jpe?g|bmp|tiff?|webp)$", "", item_id, flags=re.IGNORECASE)
    stem = _SAFE.sub("_", item_id).strip("._")
    if not stem:
        raise InputError(f"item id {item_id!r} gives an empty file name")
    return stem


def _rel_path(split: str, domain: str, stem: str, domains: tuple[str, ...]) -> str:
    return f"{split}/{stem}.png" if len(domains) == 1 else f"{split}/{domain}/{stem}.png"


def _tmp_path(root: Path, rel: str) -> Path:
    split, rest = rel.split("/", 1)
    return root / f".{split}.tmp" / rest


def _source_label(item: SourceItem, source: Path) -> str:
    """Where the pixels came from, relative to the source (so moving it changes nothing)."""
    loc = item.location
    if loc.startswith(("zip://", "tar://")):
        archive, member = loc[len("zip://"):].split("!", 1)
        return f"{Path(archive).name}!{member}"
    try:
        return Path(loc).relative_to(source).as_posix()
    except ValueError:
        return loc


# -- the per-item work (runs in workers) ------------------------------------------------------


@dataclass(frozen=True)
class _Task:
    item: SourceItem
    split: str
    stem: str
    root: str
    dataset: str
    config: PrepareConfig
    source_label: str


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _process_item(task: _Task) -> dict[str, Any]:
    """Decode, transform, encode and write one item; a journal record back.

    Read/decode failures and ``ItemError`` from the transform (a per-item
    problem such as a missing paired target) are returned as ``{"error": ...}``
    (quarantine); any other transform failure is a bug and raises.
    """
    item = task.item
    base = {"item_id": item.item_id, "location": task.source_label}
    try:
        img = item.open()
    except Exception as err:  # noqa: BLE001 - PIL/zip/OS raise many types for bad bytes
        message = re.sub(r" at 0x[0-9a-f]+", "", str(err))  # no addresses: stable reports
        return {**base, "error": f"{type(err).__name__}: {message}"}
    recipe = get_recipe(task.dataset)
    try:
        outputs = recipe.transform(img, item, task.config)
    except ItemError as err:
        return {**base, "error": f"{type(err).__name__}: {err}"}
    if set(outputs) != set(recipe.domains):
        raise RuntimeError(f"recipe {recipe.name} returned domains {sorted(outputs)} for "
                           f"{item.item_id}, expected {list(recipe.domains)}")
    root = Path(task.root)
    pair = task.stem if len(recipe.domains) > 1 else ""
    rows = []
    for domain in recipe.domains:
        out = outputs[domain]
        data = _png(out)
        rel = _rel_path(task.split, domain, task.stem, recipe.domains)
        atomic_write_bytes(_tmp_path(root, rel), data)
        rows.append({"path": rel, "sha256": hashlib.sha256(data).hexdigest(),
                     "width": out.width, "height": out.height, "mode": out.mode,
                     "split": task.split, "source": task.source_label,
                     "group": item.group or item.item_id, "domain": domain, "pair": pair,
                     "label": "" if item.label is None else int(item.label),
                     # after the transform: recipes record facts here (e.g. target_kind)
                     "extra": json.dumps(item.extra, sort_keys=True, separators=(",", ":"),
                                         default=str)})
    return {**base, "rows": rows}


def _process_chunk(tasks: list[_Task]) -> list[dict[str, Any]]:
    return [_process_item(t) for t in tasks]


def _worker_init() -> None:
    """One torch/BLAS thread per worker: the pool already uses every core."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover - torch is a dependency
        pass


# -- journal ------------------------------------------------------------------------------------


def _read_journal(path: Path, fingerprint: str) -> dict[str, dict[str, Any]]:
    """Records of a previous run with the same fingerprint, by item id (else empty)."""
    if not path.is_file():
        return {}
    records: dict[str, dict[str, Any]] = {}
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f):
            try:
                rec = json.loads(line)
            except ValueError:
                break  # a torn last line from a crash
            if n == 0:
                if rec.get("fingerprint") != fingerprint:
                    return {}
                continue
            records[rec["item_id"]] = rec
    return records


def _still_valid(root: Path, rec: dict[str, Any]) -> bool:
    if "error" in rec:
        return True
    for row in rec["rows"]:
        p = _tmp_path(root, row["path"])
        try:
            if hashlib.sha256(p.read_bytes()).hexdigest() != row["sha256"]:
                return False
        except OSError:
            return False
    return True


class _Journal:
    """Append-only, fsynced JSON-lines journal of finished items."""

    def __init__(self, path: Path, fingerprint: str, records: Iterable[dict[str, Any]]) -> None:
        self.path = path
        with atomic_file(path, "w", encoding="utf-8") as f:  # the trusted records, rewritten
            f.write(json.dumps({"fingerprint": fingerprint}) + "\n")
            for rec in records:
                f.write(json.dumps(rec, sort_keys=True) + "\n")
        self.f = path.open("a", encoding="utf-8")
        self.pending = 0

    def append(self, rec: dict[str, Any]) -> None:
        self.f.write(json.dumps(rec, sort_keys=True) + "\n")
        self.pending += 1
        if self.pending >= FSYNC_EVERY:
            self.sync()

    def sync(self) -> None:
        self.f.flush()
        os.fsync(self.f.fileno())
        self.pending = 0

    def close(self) -> None:
        self.sync()
        self.f.close()


# -- manifest -----------------------------------------------------------------------------------


def write_prepared_manifest(rows: Iterable[dict[str, Any]], path: Path) -> Path:
    """Write ``PREPARED_COLUMNS`` rows sorted by (split, path), ``\\n`` endings, atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(PREPARED_COLUMNS)
    for row in sorted(rows, key=lambda r: (r["split"], r["path"])):
        writer.writerow([row[c] for c in PREPARED_COLUMNS])
    atomic_write_text(path, buf.getvalue())
    return path


# -- the engine ---------------------------------------------------------------------------------


def _is_complete(root: Path, fingerprint: str) -> dict[str, Any] | None:
    try:
        marker = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if marker.get("fingerprint") != fingerprint or not (root / "manifest.csv").is_file():
        return None
    if any(not (root / s).is_dir() for s in marker.get("splits", [])):
        return None
    return marker


def _recover_splits(root: Path, resuming: bool) -> None:
    """Bring ``.tmp`` folders into a known state before work starts.

    Resuming (journal matches): a ``<split>/`` without its ``.tmp`` was renamed
    by an interrupted finish of *this* run, so it goes back to ``.tmp``.
    Not resuming: every ``.tmp`` is stale and removed.
    """
    for split in SPLITS:
        tmp, final = root / f".{split}.tmp", root / split
        if not resuming:
            shutil.rmtree(tmp, ignore_errors=True)
        elif final.is_dir() and not tmp.exists():
            os.replace(final, tmp)


def _prune(root: Path, keep: set[str]) -> None:
    """Delete files in the ``.tmp`` folders that no trusted journal record lists."""
    for split in SPLITS:
        tmp = root / f".{split}.tmp"
        if not tmp.is_dir():
            continue
        for p in sorted(tmp.rglob("*"), reverse=True):
            rel = f"{split}/{p.relative_to(tmp).as_posix()}"
            if p.is_file() and rel not in keep:
                p.unlink()
            elif p.is_dir() and not any(p.iterdir()):
                p.rmdir()


def _tasks(recipe: DatasetRecipe, reader: DatasetReader, source: Path, root: Path,
           config: PrepareConfig, plan: dict[str, str], done: dict[str, dict[str, Any]],
           seen: dict[str, str], counter: list[int]) -> Iterator[_Task]:
    """Stream the reader into tasks, skipping journaled items; checks stems are unique."""
    for item in _stream(reader, source, config):
        counter[0] += 1
        stem = file_stem(item.item_id)
        if stem in seen:
            raise InputError(f"items {seen[stem]!r} and {item.item_id!r} map to the same file "
                             f"name {stem!r}")
        seen[stem] = item.item_id
        if item.item_id in done:
            continue
        yield _Task(item, split_of(item, plan), stem, str(root), recipe.name, config,
                    _source_label(item, source))


def _available_cores() -> int:
    """Cores this process may run on (the affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _chunks(it: Iterator[_Task], size: int) -> Iterator[list[_Task]]:
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def prepare_dataset(name: str, source: str | os.PathLike, out_root: str | os.PathLike,
                    config: PrepareConfig | None = None,
                    progress: Progress | None = None) -> PrepareReport:
    """Prepare dataset ``name`` from ``source`` into ``out_root/<name>/``.

    See the module docstring for layout, resume, idempotence and splits.

    Args:
        name: recipe name (``available_datasets()``).
        source: the archive or extracted folder, as its publisher distributes it.
        out_root: parent of the dataset folder (e.g. ``data``).
        config: prepare options; unset fields take the recipe's defaults.
        progress: optional ``progress(done, total)``; ``total`` is ``0`` while
            the reader is still being streamed (unknown).

    Returns:
        The report (``skipped=True`` when the output was already complete).

    Raises:
        InputError: unknown recipe, missing source, bad fractions, two items
            with the same file name, or too many unreadable items (the message
            lists them).
        DatasetLayoutError: the source does not have the publisher's layout.
    """
    t0 = time.perf_counter()
    recipe = get_recipe(name)
    source = Path(source).resolve()
    cfg = effective_config(recipe, config or PrepareConfig())
    _validate_fractions(cfg.fractions)
    fingerprint = source_fingerprint(name, source, cfg)
    root = Path(out_root).resolve() / name
    report = PrepareReport(dataset=name, root=str(root), manifest=str(root / "manifest.csv"),
                           fingerprint=fingerprint,
                           expectations=recipe.expectations(cfg).to_dict())

    marker = _is_complete(root, fingerprint)
    if marker is not None:
        stored = marker["report"]
        report.counts, report.items = stored["counts"], stored["items"]
        report.quarantined = stored["quarantined"]
        report.skipped = True
        report.seconds = time.perf_counter() - t0
        return report

    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).unlink(missing_ok=True)  # from here on the output is not "done"
    journal_path = root / JOURNAL
    previous = _read_journal(journal_path, fingerprint)
    _recover_splits(root, resuming=bool(previous))
    done = {k: r for k, r in previous.items() if _still_valid(root, r)}
    _prune(root, {row["path"] for r in done.values() for row in r.get("rows", [])})
    report.reused = len(done)
    journal = _Journal(journal_path, fingerprint, done.values())

    records = dict(done)
    counter = [0]
    reader = recipe.reader()  # one reader for both passes (it may log layout warnings once)
    tasks = _tasks(recipe, reader, source, root, cfg, plan_splits(reader, source, cfg), done,
                   {}, counter)
    workers = max(1, cfg.workers or _available_cores())
    processed = 0
    try:
        if workers == 1:
            results: Iterator[list[dict[str, Any]]] = (
                [_process_item(t)] for t in tasks)
            pool = None
        else:
            ctx = multiprocessing.get_context("spawn")
            pool = ctx.Pool(workers, initializer=_worker_init)
            # chunks of tasks keep pickling overhead low; imap keeps results in order
            results = pool.imap(_process_chunk, _chunks(tasks, 8))
        for batch in results:
            for rec in batch:
                journal.append(rec)
                records[rec["item_id"]] = rec
                processed += 1
                if progress is not None:
                    progress(len(records), 0)
        if pool is not None:
            pool.close()
            pool.join()
    except BaseException:
        if workers > 1 and pool is not None:
            pool.terminate()
        journal.close()
        raise
    finally:
        close_archives()  # the ones this process opened (workers=1); workers' die with them
    journal.close()

    report.items = counter[0]
    if progress is not None:
        progress(len(records), report.items)
    bad = sorted((r for r in records.values() if "error" in r), key=lambda r: r["item_id"])
    report.quarantined = [{k: r[k] for k in ("item_id", "location", "error")} for r in bad]
    if report.items == 0:
        raise InputError(f"{source} holds no item for dataset {name}")
    if len(bad) > cfg.max_bad_fraction * report.items:
        listing = "; ".join(f"{q['item_id']} ({q['error']})" for q in report.quarantined[:20])
        raise InputError(f"{len(bad)} of {report.items} items of {name} are unreadable, more "
                         f"than max_bad_fraction={cfg.max_bad_fraction}: {listing}")

    rows = [row for r in records.values() for row in r.get("rows", [])]
    counts: dict[str, dict[str, int]] = {}
    for row in rows:
        by_domain = counts.setdefault(row["split"], {})
        by_domain[row["domain"]] = by_domain.get(row["domain"], 0) + 1
    report.counts = {s: dict(sorted(counts[s].items())) for s in SPLITS if s in counts}

    # finish: swap every split in (old complete splits of another config go away)
    for split in SPLITS:
        tmp, final = root / f".{split}.tmp", root / split
        if tmp.is_dir() and not any(p.is_file() for p in tmp.rglob("*")):
            shutil.rmtree(tmp)
        if tmp.is_dir() or final.is_dir():
            if final.is_dir():
                shutil.rmtree(final)
            if tmp.is_dir():
                os.replace(tmp, final)
    write_prepared_manifest(rows, root / "manifest.csv")
    report.seconds = time.perf_counter() - t0
    report.images_per_second = processed / report.seconds if report.seconds > 0 else 0.0
    atomic_write_text(root / MARKER, (json.dumps(
        {"fingerprint": fingerprint, "format": PREPARE_FORMAT_VERSION,
         "splits": sorted(report.counts), "report": report.to_dict()},
        indent=2, sort_keys=True) + "\n"))
    journal_path.unlink(missing_ok=True)
    return report
