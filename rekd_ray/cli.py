"""``rekd``: the command line of rekd-ray.

Each command is a thin layer over the library: parse and validate options,
call one library function, render the result. Bad input ends with a one-line
``error: <field>: <what is allowed>`` on stderr and exit code 2, before
anything (a Ray cluster, an MLflow run, a checkpoint) is created.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from rekd_ray.config import ConfigError, build_config, load_config
from rekd_ray.paths import check_output_file

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Relation Knowledge Distillation (ReKD) for small backbones, on Ray.",
)
stderr = Console(stderr=True)

EXIT_BAD_INPUT = 2  # failed runs exit 1, interrupts 130


def _print_error(message: object) -> None:
    """``error: <message>`` on stderr; the message is printed as given (a
    path or value with square brackets is not read as rich markup)."""
    stderr.print(
        f"[bold red]error:[/] {escape(str(message))}", highlight=False, soft_wrap=True
    )


def _fail(message: str) -> None:
    _print_error(message)
    raise typer.Exit(EXIT_BAD_INPUT)


def _setup_logging(verbose: bool) -> None:
    # Through rich, so log lines print above the progress bar, not into it.
    logging.basicConfig(
        level=logging.WARNING,
        format="%(name)s: %(message)s",
        handlers=[RichHandler(console=stderr, show_path=False)],
        force=True,
    )
    logging.getLogger("rekd_ray").setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("ray", "mlflow", "alembic", "faiss"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)


@contextlib.contextmanager
def _stdout_to_stderr(enabled: bool):
    """Send everything written to fd 1 (Ray, libraries) to stderr meanwhile,
    so that ``--json`` prints exactly one object on stdout."""
    if not enabled:
        yield
        return
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


ConfigArg = Annotated[
    Path | None,
    typer.Argument(
        help="Experiment YAML (see experiments/). Defaults apply if left out."
    ),
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config value: --set optim.lr=0.1 (repeat)."),
]
AddressOption = Annotated[
    str | None,
    typer.Option(
        help="Ray cluster address (e.g. auto); a local Ray starts if omitted."
    ),
]
TrackingOption = Annotated[
    str | None,
    typer.Option(help="MLflow tracking URI (default: sqlite:///mlflow.db here)."),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one JSON object on stdout, nothing else.")
]
VerboseOption = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logs.")]
CpuOption = Annotated[
    bool,
    typer.Option(
        "--cpu",
        help="Force CPUs: no GPU for Train workers nor for a clustering "
        "service this run creates (runtime.use_gpu=false, clustering_gpus=0).",
    ),
]


ResumeOption = Annotated[
    str | None,
    typer.Option(
        "--resume",
        metavar="RUN_ID",
        help="Continue this KILLED or FAILED run from its last checkpoint, in "
        "the same MLflow run (its own config unless one is given).",
    ),
]


def _existing_store(tracking_uri: str | None) -> str:
    """The resolved URI of a store that must already hold MLflow runs."""
    from rekd_ray.tracking.mlflow_run import check_tracking_uri, open_tracking_store

    uri = check_tracking_uri(tracking_uri, existing=True)
    open_tracking_store(uri)
    return uri


def _resume_point(run_id, experiment, config_file, overrides, tracking_uri):
    """Where ``--resume RUN_ID`` continues (raises ConfigError): the run's
    config with ``--set`` applied, or a config file that must match it."""
    from rekd_ray.orchestration.resume import prepare_resume

    if not run_id.strip():
        raise ConfigError(
            "--resume: empty run id; pass the RUN_ID of a KILLED or FAILED run"
        )
    uri = _existing_store(tracking_uri)
    given = experiment if config_file is not None else None
    return prepare_resume(run_id, uri, given, overrides)


@app.command()
def train(
    config: ConfigArg = None,
    set_: SetOption = None,
    address: AddressOption = None,
    tracking_uri: TrackingOption = None,
    json_output: JsonOption = False,
    verbose: VerboseOption = False,
    cpu: CpuOption = False,
    resume: ResumeOption = None,
) -> None:
    """Train one experiment on Ray, evaluate it and log it to MLflow."""
    _setup_logging(verbose)
    resume_point = None
    try:
        from rekd_ray.orchestration.devices import FORCE_CPU_OVERRIDES

        overrides = [*(set_ or []), *(FORCE_CPU_OVERRIDES if cpu else ())]
        experiment = load_config(config, overrides)
        from rekd_ray.orchestration.runner import (
            check_address,
            check_against_data,
            check_local_resources,
        )

        check_address(address)
        if resume is not None:
            resume_point = _resume_point(
                resume, experiment, config, overrides, tracking_uri
            )
            experiment = resume_point.config
        else:
            from rekd_ray.tracking.mlflow_run import check_tracking_uri

            check_tracking_uri(tracking_uri)
        check_local_resources(experiment, address)
        check_against_data(experiment)
    except ConfigError as error:
        _fail(str(error))

    from rekd_ray.orchestration.runner import RunFailedError, run_training

    try:
        with (
            _stdout_to_stderr(json_output),
            _progress(enabled=not json_output) as update,
        ):
            summary = run_training(
                experiment,
                tracking_uri=tracking_uri,
                address=address,
                on_progress=update,
                resume=resume_point,
            )
    except RunFailedError as error:
        _print_error(error)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        stderr.print(
            "interrupted: the MLflow run is marked KILLED; continue it with "
            "`rekd train --resume RUN_ID`"
        )
        raise typer.Exit(130) from None
    if json_output:
        typer.echo(json.dumps(summary.to_json()))
    else:
        Console().print(_summary_table(summary))


@contextlib.contextmanager
def _progress(enabled: bool):
    """A rich progress bar fed with the rank-0 worker's progress dicts."""
    if not enabled:
        yield None
        return
    columns = (
        TextColumn("[bold]training"),
        BarColumn(),
        TextColumn("step {task.fields[step]}"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("kNN {task.fields[knn]}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=stderr, transient=False) as progress:
        task = progress.add_task(
            "train", total=None, step="starting Ray workers...", loss="-", knn="-"
        )

        def update(state: dict) -> None:
            if not state:
                return
            fields = {}
            if "loss" in state:
                fields["loss"] = f"{state['loss']:.3f}"
            if "val/knn_top1" in state:
                fields["knn"] = f"{100 * state['val/knn_top1']:.1f}%"
            step, total = int(state.get("step", 0)), state.get("total_steps")
            if total:
                fields["step"] = f"{step}/{int(total)}"
            progress.update(task, completed=step, total=total, **fields)

        yield update


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _summary_table(summary) -> Table:
    table = Table(title="rekd train: summary")
    for column in ("field", "value"):
        table.add_column(column)
    rows = [
        ("run id", summary.run_id),
        ("method", summary.method),
        ("student", summary.student),
        ("teacher", summary.teacher or "-"),
        ("M (prototypes)", str(summary.num_prototypes or "-")),
        ("epochs", str(summary.epochs)),
        ("linear top-1 %", _percent(summary.linear_top1)),
        ("kNN top-1 %", _percent(summary.knn_top1)),
        ("random-init linear top-1 %", _percent(summary.random_init_linear_top1)),
        ("random-init kNN top-1 %", _percent(summary.random_init_knn_top1)),
        ("wall time", f"{summary.wall_seconds / 60:.1f} min"),
        ("MLflow", summary.tracking_uri),
    ]
    for row in rows:
        table.add_row(*row)
    return table


@app.command("eval")
def evaluate(
    run_id: Annotated[str, typer.Argument(help="MLflow run id of a `rekd train` run.")],
    tracking_uri: TrackingOption = None,
    json_output: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Re-run linear evaluation of a logged run from its MLflow artifacts."""
    _setup_logging(verbose)
    import torch
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from rekd_ray.data.datasets import load_dataset
    from rekd_ray.data.fashion_mnist import DatasetMissingError
    from rekd_ray.models.backbones import build_backbone
    from rekd_ray.tracking.mlflow_run import log_metrics
    from rekd_ray.training.evaluate import final_evaluation

    try:
        uri = _existing_store(tracking_uri)
    except ConfigError as error:
        _fail(str(error))
    client = MlflowClient(uri)
    with tempfile.TemporaryDirectory() as directory:
        try:
            client.get_run(run_id)
            config_path = client.download_artifacts(run_id, "config.json", directory)
            weights = client.download_artifacts(
                run_id, "student_backbone.pt", directory
            )
        except (MlflowException, OSError):
            _fail(
                f"RUN_ID: no finished rekd run {run_id!r} with artifacts in {uri}; "
                "list runs with `mlflow ui` or pass --tracking-uri"
            )
        try:
            config = build_config(json.loads(Path(config_path).read_text()))
        except ConfigError as error:
            _fail(
                f"RUN_ID: run {run_id} was logged with a config this version "
                f"rejects ({error}); evaluate it with the version that trained it"
            )
        backbone = build_backbone(config.student.backbone, config.data.image_size)
        backbone.load_state_dict(torch.load(weights, weights_only=True))
    try:
        data = load_dataset(config.data, seed=config.seed)  # the run's subsets
    except (DatasetMissingError, ConfigError) as error:
        _fail(f"data.root: {error}")
    with _stdout_to_stderr(json_output):
        metrics = final_evaluation(backbone, data, config)
        log_metrics(uri, run_id, {f"eval/{k}": v for k, v in metrics.items()}, 0)
    result = {"run_id": run_id, **{k: 100.0 * v for k, v in metrics.items()}}
    if json_output:
        typer.echo(json.dumps(result))
    else:
        Console().print(
            f"run {run_id}: linear top-1 {result['linear_top1']:.2f} %, "
            f"kNN top-1 {result['knn_top1']:.2f} %"
        )


# --- sweeps -------------------------------------------------------------

MaxConcurrentOption = Annotated[
    int | None,
    typer.Option(help="Trials run at once (default: the sweep file's max_concurrent)."),
]


@app.command()
def sweep(
    sweep_file: Annotated[
        Path, typer.Argument(help="Sweep YAML (see experiments/sweep_*.yaml).")
    ],
    address: AddressOption = None,
    tracking_uri: TrackingOption = None,
    max_concurrent: MaxConcurrentOption = None,
    json_output: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Run a sweep (a grid over config fields) on Ray Tune, one MLflow parent run."""
    _setup_logging(verbose)
    from rekd_ray.sweep.runner import (
        SweepFailedError,
        check_max_concurrent,
        check_sweep,
        run_sweep,
    )
    from rekd_ray.sweep.spec import load_sweep
    from rekd_ray.tracking.mlflow_run import check_tracking_uri

    try:
        check_max_concurrent(max_concurrent)
        spec = load_sweep(sweep_file)
        check_sweep(spec, address, max_concurrent)
        check_tracking_uri(tracking_uri)
    except ConfigError as error:
        _fail(str(error))
    try:
        with _stdout_to_stderr(json_output):
            result = run_sweep(
                spec,
                tracking_uri=tracking_uri,
                address=address,
                max_concurrent=max_concurrent,
            )
    except SweepFailedError as error:
        _print_error(error)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        stderr.print("interrupted: the sweep's MLflow runs are marked KILLED")
        raise typer.Exit(130) from None
    if json_output:
        typer.echo(json.dumps(result.to_json()))
    else:
        from rekd_ray.sweep.report import sweep_table

        Console().print(sweep_table(result))
    if result.failed:
        raise typer.Exit(1)


@app.command()
def compare(
    sweep_or_run: Annotated[
        str, typer.Argument(help="A sweep file, a sweep name or its parent run id.")
    ],
    metric: Annotated[
        str, typer.Option(help="Metric compared: final/<metric> unless it has a /.")
    ] = "linear_top1",
    baseline: Annotated[
        str | None,
        typer.Option(help="Baseline setting, e.g. method=mocov2 (default: sweep's)."),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(help="PNG path (default: ./<sweep>_<metric>.png)."),
    ] = None,
    tracking_uri: TrackingOption = None,
    json_output: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Compare a sweep's trials: table, mean and 95 % interval, plot."""
    _setup_logging(verbose)
    from mlflow.tracking import MlflowClient

    from rekd_ray.sweep.compare import build_comparison, parse_baseline
    from rekd_ray.sweep.plot import plot_comparison
    from rekd_ray.sweep.runs import find_parent_run

    try:
        if plot is not None:
            check_output_file(plot, "--plot", suffix=".png")
        uri = _existing_store(tracking_uri)
        parent = find_parent_run(uri, sweep_or_run)
        comparison = build_comparison(uri, parent, metric, parse_baseline(baseline))
        name = comparison.metric.split("/")[-1]
        plot = plot or Path(f"{comparison.sweep}_{name}.png")
        check_output_file(plot, "--plot", suffix=".png")
    except (LookupError, ValueError) as error:  # ConfigError is a ValueError
        _fail(str(error))
    plot_comparison(comparison, plot)
    MlflowClient(uri).log_artifact(parent, str(plot))
    if json_output:
        typer.echo(json.dumps({**comparison.to_json(), "plot": str(plot)}))
        return
    from rekd_ray.sweep.report import comparison_tables

    for table in comparison_tables(comparison):
        Console().print(table)
    Console().print(f"plot: {plot} (also logged to the parent run)")


# --- benchmarks ---------------------------------------------------------


@app.command()
def bench(
    name: Annotated[
        str,
        typer.Argument(help="overhead, step, clustering, store or data."),
    ],
    quick: Annotated[
        bool, typer.Option("--quick", help="Small sizes: under a minute.")
    ] = False,
    json_output: JsonOption = False,
    out: Annotated[
        Path | None, typer.Option(help="Also write the JSON result to this file.")
    ] = None,
    verbose: VerboseOption = False,
) -> None:
    """Measure one part of rekd-ray; print a table and the targets met."""
    _setup_logging(verbose)
    from rekd_ray.bench import BENCHMARK_NAMES, run_benchmark

    if name not in BENCHMARK_NAMES:
        choices = ", ".join(BENCHMARK_NAMES)
        _fail(f"NAME: unknown benchmark {name!r}; choose one of {choices}")
    if out is not None:
        try:
            check_output_file(out, "--out")
        except ConfigError as error:
            _fail(str(error))
    with _stdout_to_stderr(json_output):
        result = run_benchmark(name, quick=quick)
    if out is not None:
        from rekd_ray.bench.common import write_json

        write_json(result, out)
    if json_output:
        typer.echo(json.dumps(result.to_json()))
        return
    from rekd_ray.bench.render import rich_tables

    for table in rich_tables(result):
        Console().print(table)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
