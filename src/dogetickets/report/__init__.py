"""Reports of finished runs: tables, paired bootstrap and figures. Reads run directories; never trains.

``write_report([run_dir, ...])`` writes report.md, a self-contained report.html, the CSVs (table2.csv,
runs.csv, bootstrap.csv, one per figure) and the figures, into the first run directory by default. Beside
the tables: a summary of the dev-selected differences, the wall time and machine of each run directory
(its timing.json, with the machine description under "machine") and the commands that reproduce it all.
A report written again to a folder of its own (``out``, not a run directory) removes the files the last one
wrote there and this one did not (a figure of a dataset no longer given, a section's CSV that no longer
applies): report-files.json lists them; no other file is touched. A run directory, which `doge preview` and
`doge analyze` write into as well, is never cleaned.

The pieces: ``document`` (the report as blocks, rendered to markdown and HTML), ``sections`` (one function
per section), ``comparisons`` (the answer table, paired bootstrap, summary, power), ``domain_count``
(Table 4: the same data with fewer training domains), ``provenance`` (wall time, machine, reproduce),
``diagnostics`` (computation), ``diagnostics_figure`` and ``diagnostics_section``; the data
from ``collect`` (the runs table), ``select``, ``stats``, ``tables``, ``figures``, ``allocations``, ``paper``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from dogetickets.report.document import DEFAULT_TITLE, Document

__all__ = ["DEFAULT_TITLE", "MANIFEST", "Document", "write_report"]

MANIFEST = "report-files.json"  # in the report's folder: the files (relative to it) the last report wrote


def _report_paths(first_run_dir: Path, out: Path | None) -> tuple[Path, Path]:
    """(the markdown file, the folder of its CSVs and figures), the folder created."""
    folder = Path(out) if out is not None else first_run_dir
    md = folder / "report.md"
    if folder.suffix == ".md":  # docs/study.md: the report there, its figures and CSVs in docs/study/
        md, folder = folder, folder.with_suffix("")
    folder.mkdir(parents=True, exist_ok=True)
    return md, folder


def write_report(
    run_dirs: list[Path],
    out: Path | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    title: str = DEFAULT_TITLE,
    commands: list[str] | None = None,
    seeds: Iterable[int] | None = None,
) -> Path:
    """Write report.md, report.html, CSVs and figures for the given run directories (one per dataset).

    `out` defaults to the first run directory; an `out` ending in .md is the report file itself, its
    figures and CSVs then go into the folder of the same stem (docs/study.md -> docs/study/). `title` is
    the report's heading and HTML title. `commands`,
    when given, are shown verbatim as the commands that reproduce the report; otherwise they are generated
    (`doge run` of each directory's config.toml, or of the original config when timing.json records it, and
    this `doge report`). `seeds`: report only these seeds (e.g. those a running study has finished; every
    table, figure and diagnostic reads only them; the wall time stays the directories' whole). Returns the
    path of report.md. A DogeError (one line) when a directory is missing or has no finished run.
    """
    from dogetickets.errors import DogeError
    from dogetickets.io import atomic_write_text, recording_writes
    from dogetickets.report import comparisons, domain_count, provenance, sections, training
    from dogetickets.report.collect import dataset_names, load_all
    from dogetickets.report.diagnostics_section import section as diagnostics
    from dogetickets.report.select import select_dev_in_order

    run_dirs = [Path(d) for d in run_dirs]
    if not run_dirs:
        raise DogeError("no run directory given")
    seeds = None if seeds is None else list(seeds)
    md, folder = _report_paths(run_dirs[0], out)
    all_runs = load_all(run_dirs, seeds)
    all_names = dataset_names(run_dirs)
    # a domain-count variant (the same data, fewer training domains) goes to Table 4, not among the datasets
    fams = domain_count.families(run_dirs)
    smaller = {i for f in fams for i in f.members[1:]}
    names = [n for i, n in enumerate(all_names) if i not in smaller]
    main_dirs = [d for i, d in enumerate(run_dirs) if i not in smaller]
    runs = all_runs[all_runs["dataset"].isin(names)]

    with recording_writes() as written:
        sel = select_dev_in_order(runs)
        boot = comparisons.compute(sel, folder, n_boot, seed)
        doc = Document(md_dir=md.parent)
        sections.inputs(doc, title, all_names, run_dirs, all_runs, seeds)
        sections.selection_rule(doc)
        sections.table2(doc, runs, folder)
        comparisons.answer(doc, names, sel, runs, boot)
        sections.paper_beside_ours(doc, names, main_dirs, runs)
        sections.dev_selected(doc, sel)
        comparisons.bootstrap(doc, boot, n_boot, seed)
        comparisons.summary(doc, names, sel, runs, boot)
        comparisons.power(doc, boot)
        domain_count.section(doc, all_names, fams, all_runs, folder, n_boot, seed, run_dirs)
        sections.allocations_compared(doc, runs, folder)
        provenance.wall_time(doc, all_names, run_dirs, all_runs)
        provenance.reproduce(doc, run_dirs, out, n_boot, seed, title, commands, seeds)
        sections.figures_section(doc, names, main_dirs, runs, folder, seeds)
        diagnostics(doc, names, main_dirs, folder, seeds)
        training.section(doc, all_names, run_dirs, folder, seeds)
        sections.all_runs(doc, all_runs)

        atomic_write_text(md, doc.markdown())
        atomic_write_text(md.with_suffix(".html"), doc.html(title))
    if folder.resolve() not in {d.resolve() for d in run_dirs}:
        _remove_stale(folder, written | {Path(x[0]) for kind, x in doc.blocks if kind == "img"})
    return md


def _remove_stale(folder: Path, used: set[Path]) -> None:
    """Remove the files of `folder` that the last report listed in its manifest and this one did not use
    (write or link), then list this one's. Only plain names of files directly in `folder` are acted on, never
    a link: a damaged manifest touches nothing else."""
    from dogetickets.io import is_writer, read_json_or_none, write_json

    if not is_writer():
        return
    mine = sorted({p.name for p in used if p.parent.resolve() == folder.resolve()})
    last = read_json_or_none(folder / MANIFEST)
    names = last.get("files", []) if isinstance(last, dict) else []
    for name in {str(n) for n in (names if isinstance(names, list) else [])} - set(mine) - {MANIFEST}:
        path = folder / name
        if Path(name).name == name and name not in (".", "..") and path.is_file() and not path.is_symlink():
            path.unlink()
    write_json(folder / MANIFEST, {"written_by": "doge report", "files": mine})
