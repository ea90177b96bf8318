"""`doge`: one thin command per stage.

Failures end cleanly: a DogeError or a usage error is one line on stderr and exit code 2, Ctrl-C is
"interrupted" and exit code 130; never a traceback. Heavy modules (torch, transformers) are imported
inside the commands, so `doge --help` is quick.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer

from dogetickets.errors import DogeError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Doge tickets: keep the domain-general heads and FFN blocks of a fine-tuned encoder.",
)
data_app = typer.Typer(no_args_is_help=True, help="The paper's released data.")
app.add_typer(data_app, name="data")

ConfigArg = Annotated[Path, typer.Argument(help="A run config (TOML), e.g. configs/quickstart.toml")]
DataDirOpt = Annotated[
    str | None, typer.Option("--data-dir", help="Data directory (default: data.dir, or $DOGE_DATA_DIR)")
]
OutOpt = Annotated[str | None, typer.Option("--out", help="Run directory (default: run.out of the config)")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="'minilm' (packaged), a Hub name or a folder")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Override a config key: --set train.lr=3e-5 (TOML value)")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress messages: print only results and paths")]


def _overrides(data_dir: str | None, out: str | None, model: str | None, sets: list[str] | None) -> dict:
    o: dict[str, Any] = {}
    if data_dir:
        o["data.dir"] = data_dir
    if out:
        o["run.out"] = out
    if model:
        o["model.name"] = model
    for item in sets or []:
        if "=" not in item:
            raise DogeError(f"--set {item!r}: expected KEY=VALUE")
        key, raw = item.split("=", 1)
        try:
            o[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            o[key.strip()] = raw
    return o


def _sweep(config: Path, data_dir: str | None, out: str | None, model: str | None,
              sets: list[str] | None, quiet: bool, worker: bool = False):  # noqa: ANN202
    from dogetickets.config import load_config
    from dogetickets.run.sweep import Sweep

    cfg = load_config(config, _overrides(data_dir, out, model, sets))
    return Sweep(cfg, show_progress=not quiet, worker=worker)


@app.command()
def run(config: ConfigArg, data_dir: DataDirOpt = None, out: OutOpt = None, model: ModelOpt = None,
        set_: SetOpt = None, quiet: QuietOpt = False,
        workers: Annotated[int, typer.Option(
            "--workers", min=0, help="Run the sweep's jobs on a local Ray instance with this many workers "
            "(a GPU each where there are GPUs, else cores/N threads each); 0: one after another")] = 0,
        address: Annotated[str | None, typer.Option(
            "--address", help="Join a running Ray cluster ('auto' on one of its nodes, or ray://host:port, its "
            "Ray Client server) instead of starting one; its nodes' CPUs and GPUs decide how many jobs run at "
            "once (not combined with --workers); the run directory must be on a filesystem every node sees")] = None,
        only: Annotated[str | None, typer.Option(
            "--only", help="Do exactly one job, named by its path in the run directory (see `doge jobs`), "
            "e.g. seed0/erm or seed0/rewind/doge-s10; its inputs must be finished")] = None) -> None:
    """The whole protocol: fine-tune, score, prune, rewind, evaluate; prints the results table."""
    from dogetickets.results import print_results

    if only is not None:
        if workers or address:
            raise DogeError("--only runs one job here: it does not combine with --workers/--address")
        path = _sweep(config, data_dir, out, model, set_, quiet, worker=True).run_one(only)
        typer.echo(f"done: {path}")
        return
    if workers or address:
        from dogetickets.distributed import check_options

        check_options(workers, address)  # before anything is read
    sweep = _sweep(config, data_dir, out, model, set_, quiet)
    if workers or address:
        from dogetickets.distributed import run_ray

        results = run_ray(sweep, workers, address)
    else:
        results = sweep.run()
    if results:  # empty when every run failed
        print_results(results)
        typer.echo(f"results: {sweep.out / 'results.md'}")
    failure = sweep.failure()
    if failure is not None:
        raise failure


@app.command()
def jobs(config: ConfigArg, data_dir: DataDirOpt = None, out: OutOpt = None, model: ModelOpt = None,
         set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Print the sweep's pending jobs, one `doge run --only` command each, in dependency order (a job's
    inputs come before it), for another scheduler (e.g. a SLURM array, each wave after the one before).
    Prepares the run directory (config, labels) as `doge run` does; prints only the commands (-q or not)."""
    import shlex

    sweep = _sweep(config, data_dir, out, model, set_, quiet=True)
    base = ["doge", "run", str(config)]
    for flag, value in (("--data-dir", data_dir), ("--out", out), ("--model", model)):
        if value:
            base += [flag, value]
    for item in set_ or []:
        base += ["--set", item]
    for job in sweep.pending():
        typer.echo(shlex.join([*base, "--only", job.name, "-q"]))


@app.command()
def finetune(config: ConfigArg, data_dir: DataDirOpt = None, out: OutOpt = None, model: ModelOpt = None,
             set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Save the rewind point, fine-tune (ERM, and IRM if a baseline), evaluate."""
    _sweep(config, data_dir, out, model, set_, quiet).finetune()


@app.command()
def score(config: ConfigArg, data_dir: DataDirOpt = None, out: OutOpt = None, model: ModelOpt = None,
          set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Per-domain expressive scores of the fine-tuned model (scores/scores.json)."""
    _sweep(config, data_dir, out, model, set_, quiet).score()


@app.command()
def prune(config: ConfigArg, data_dir: DataDirOpt = None, out: OutOpt = None, model: ModelOpt = None,
          set_: SetOpt = None, quiet: QuietOpt = False,
          finetuned: Annotated[Path | None, typer.Option(
              "--finetuned", help="A model you fine-tuned yourself (a save_pretrained folder with its tokenizer): "
              "scored on the config's training data and pruned as is, instead of the run's own ERM model; "
              "then `doge export <ticket> --model-dir <that folder> --out <dir>`")] = None) -> None:
    """Tickets of every configured method at every sparsity (seed<k>/tickets/*.json)."""
    if finetuned is not None:
        if not (finetuned / "config.json").is_file():
            raise DogeError(f"--finetuned {finetuned}: not a model folder (no config.json)")
        model = str(finetuned)  # its architecture and tokenizer
    from dogetickets.config import load_config
    from dogetickets.run.sweep import Sweep

    cfg = load_config(config, _overrides(data_dir, out, model, set_))
    for path in Sweep(cfg, show_progress=not quiet, finetuned=finetuned).prune():
        typer.echo(str(path))


@app.command()
def rewind(config: ConfigArg, data_dir: DataDirOpt = None, out: OutOpt = None, model: ModelOpt = None,
           set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Rewind every ticket to the rewind point, train again with pruned units held at zero, evaluate."""
    _sweep(config, data_dir, out, model, set_, quiet).rewind_all()


@app.command()
def evaluate(config: ConfigArg, data_dir: DataDirOpt = None, out: OutOpt = None, model: ModelOpt = None,
             set_: SetOpt = None, quiet: QuietOpt = False) -> None:
    """Re-evaluate the run's saved models on the config's dev and test domains; print the table."""
    from dogetickets.results import print_results

    sweep = _sweep(config, data_dir, out, model, set_, quiet)
    sweep.evaluate_all()
    print_results(sweep.results())


@data_app.command("fetch")
def data_fetch(
    task: Annotated[str, typer.Argument(help="amazon, mnli, ontonote or all")],
    to: Annotated[Path, typer.Option("--to", help="Destination data directory")],
    base_url: Annotated[str | None, typer.Option("--base-url", help="Where the release is served")] = None,
    quiet: QuietOpt = False,
) -> None:
    """Download the paper's released data files and verify each one's sha256."""
    from dogetickets.data.fetch import DEFAULT_BASE_URL, fetch

    paths = fetch(task, to, base_url=base_url or DEFAULT_BASE_URL, progress=not quiet)
    typer.echo(f"{len(paths)} files verified in {to}")


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="Run directories (one per dataset)")],
    out: Annotated[Path | None, typer.Option("--out", help="Where to write (default: the first run dir)")] = None,
    n_boot: Annotated[int, typer.Option("--n-boot", help="Bootstrap resamples")] = 1000,
    seed: Annotated[int, typer.Option("--seed", help="Bootstrap seed")] = 0,
    title: Annotated[str, typer.Option("--title", help="The report's heading and HTML title")] = (
        "Doge tickets report"
    ),
    command: Annotated[list[str] | None, typer.Option(
        "--command", help="A command that reproduces the report, shown verbatim under 'Reproduce' (repeatable, "
        "in order; default: generated from the run directories)")] = None,
    seeds: Annotated[list[int] | None, typer.Option(
        "--seeds", help="Report only this seed's runs (repeatable; default: every seed), e.g. the seeds a "
        "running study has finished")] = None,
    quiet: QuietOpt = False,
) -> None:
    """report.md/.html, CSVs and figures: Table 2 (dev-selected), the answer (doge - ERM, doge - winning),
    paired bootstrap, summary, power, Table 4, wall time and machine, the commands that reproduce it, figures
    and diagnostics. Written again to the same place, it removes the files its last report wrote there and
    this one does not (report-files.json)."""
    from dogetickets.report import write_report

    path = write_report(run_dirs, out=out, n_boot=n_boot, seed=seed, title=title, commands=command,
                        seeds=seeds or None)
    if not quiet:
        typer.echo(path.read_text(encoding="utf-8"))
    typer.echo(f"report: {path} (and {path.with_suffix('.html')})")


@app.command()
def analyze(config: ConfigArg, data_dir: DataDirOpt = None, out: OutOpt = None, model: ModelOpt = None,
            set_: SetOpt = None, quiet: QuietOpt = False,
            seed: Annotated[int, typer.Option("--seed", help="Which seed's fine-tuned model")] = 0,
            finetuned: Annotated[Path | None, typer.Option(
                "--finetuned", help="A fine-tuned model folder to analyze instead of the run's ERM model")] = None,
            ) -> None:
    """Expressive scores across domains (Fig. 4) and the pilot study (Fig. 1/6) of a fine-tuned model."""
    sweep = _sweep(config, data_dir, out, model, set_, quiet)
    paths, classes = sweep.analyze(seed, finetuned)
    typer.echo("units by mean x variance of their scores across domains: "
               + ", ".join(f"{k} {v}" for k, v in classes.items()))
    for path in paths:
        typer.echo(str(path))


@app.command()
def preview(config: ConfigArg, data_dir: DataDirOpt = None, out: OutOpt = None, model: ModelOpt = None,
            set_: SetOpt = None, quiet: QuietOpt = False,
            seed: Annotated[list[int] | None, typer.Option(
                "--seed", help="A seed's fine-tuned model (repeatable; default: every seed of the config)")] = None,
            grid: Annotated[str, typer.Option(
                "--grid", help="Target sparsities: START:STOP:STEP (STOP included) or a comma list like "
                "0,0.1,0.3, each in [0, 1)")] = "0:0.6:0.05",
            test: Annotated[bool, typer.Option(
                "--test", help="Also evaluate the test domains (columns apart, never used to choose)")] = False,
            ) -> None:
    """Dev score of every method's tickets over a sparsity grid, masked on the fine-tuned model (no retraining).

    Writes preview.csv (with --test, test columns apart: test_*), preview.png and preview.json into the run
    directory; reused while their settings are unchanged."""
    from dogetickets.preview import parse_grid, print_preview, run_preview

    levels = parse_grid(grid)
    print_preview(run_preview(_sweep(config, data_dir, out, model, set_, quiet), seeds=seed, grid=levels, test=test))


@app.command("export")
def export_cmd(
    src: Annotated[Path, typer.Argument(help="A rewind run folder (model/ + ticket.json) or a ticket file")],
    out: Annotated[Path, typer.Option(
        "--out", help="Folder for the physically pruned model: new, empty, or a previous export (replaced)")],
    model_dir: Annotated[Path | None, typer.Option("--model-dir", help="The masked model, if not beside")] = None,
    onnx: Annotated[bool, typer.Option(
        "--onnx", help="Also write model.onnx (dynamic batch and sequence axes; needs dogetickets[onnx])")] = False,
    quiet: QuietOpt = False,
) -> None:
    """Physically pruned model (layers keep different head counts), saved with save_pretrained; with --onnx
    also as model.onnx, checked against PyTorch in ONNX Runtime."""
    from dogetickets.models.export import export_run, load_pruned
    from dogetickets.models.onnx import ONNX_FILE, check_onnx, export_onnx, require

    if onnx:  # before the export: a missing package fails fast
        require("onnx", "onnxscript", "onnxruntime")
    path = export_run(src, out, model_dir=model_dir)
    if onnx:
        model = load_pruned(path)
        graph = export_onnx(model, path / ONNX_FILE)
        diff = check_onnx(model, graph)
        if diff > 1e-4:
            raise DogeError(f"{graph}: ONNX Runtime's outputs differ from PyTorch's by {diff:.2g} (above 1e-4)")
    if quiet:
        typer.echo(str(path))
    else:
        typer.echo(f"pruned model: {path} (load with dogetickets.load_pruned or, after `import dogetickets`, "
                   "the transformers Auto classes)")
        if onnx:
            typer.echo(f"ONNX model: {graph} (ONNX Runtime's outputs within {diff:.1g} of PyTorch's)")


@app.command()
def bench(
    model: ModelOpt = None,
    sparsities: Annotated[str, typer.Option("--sparsities", help="Comma-separated")] = "0,0.15,0.3,0.5",
    tickets: Annotated[list[Path] | None, typer.Option("--ticket", help="Ticket file(s) instead")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the results as JSON")] = None,
    repeats: Annotated[int, typer.Option("--repeats", help="Timed repeats per model")] = 8,
    device: Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu, cuda or cuda:N")] = "auto",
    runtime: Annotated[str, typer.Option(
        "--runtime", help="torch, or onnxruntime (every model exported to ONNX; CPU, no training)")] = "torch",
    quiet: QuietOpt = False,
) -> None:
    """Inference/training throughput, batch-1 latency, parameters and FLOPs: exported tickets vs full."""
    from rich.console import Console

    from dogetickets.bench import bench_device, format_bench, run_bench
    from dogetickets.tickets import Ticket

    try:
        levels = [float(x) for x in sparsities.split(",") if x.strip()]
    except ValueError:
        raise DogeError(f"--sparsities {sparsities!r}: expected numbers like 0,0.15,0.3") from None
    dev = bench_device("cpu" if runtime == "onnxruntime" and device == "auto" else device)
    loaded = [Ticket.load(t) for t in tickets] if tickets else None
    result = run_bench(model or "minilm", tickets=loaded, sparsities=levels, out=out, repeats=repeats, device=dev,
                       log=None if quiet else lambda m: typer.echo(m, err=True), runtime=runtime)
    Console(width=200).print(format_bench(result))


def _usage_error(exc: typer.TyperException) -> None:
    """One line, like a DogeError; but `doge` or `doge data` alone show the group's help."""
    message = exc.format_message().strip()
    if not message or "\n" in message:  # the help (typer's rich help has printed itself and left no message)
        if message:
            typer.echo(message, err=True)
        return
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    typer.echo(f"error: {message}{hint}", err=True)


def main() -> None:
    try:
        code = app(standalone_mode=False)  # the exit code of a typer.Exit (130 after Ctrl-C), else None
    except DogeError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except typer.TyperException as exc:  # click's usage errors (typer >= 0.26 raises those of its own copy of click)
        _usage_error(exc)
        sys.exit(2)
    except (KeyboardInterrupt, typer.Abort):
        code = 130
    if code == 130:
        typer.echo("interrupted", err=True)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
