"""Rich tables of a :class:`~rekd_ray.bench.common.BenchResult` (the CLI prints)."""

from __future__ import annotations

from rich.table import Table as RichTable

from rekd_ray.bench.common import BenchResult, Table, format_cell

__all__ = ["rich_tables"]


def _rich(table: Table) -> RichTable:
    rendered = RichTable(title=table.title)
    for index, column in enumerate(table.columns):
        rendered.add_column(column, justify="left" if index == 0 else "right")
    for row in table.rows:
        rendered.add_row(*row)
    return rendered


def _checks(result: BenchResult) -> RichTable:
    rendered = RichTable(title=f"{result.name}: targets")
    for column in ("measure", "value", "target", "met"):
        rendered.add_column(column, justify="left" if column == "measure" else "right")
    for check in result.checks:
        met = "[green]yes[/]" if check.met else "[red]no[/]"
        target = f"{check.op} {check.threshold:g}"
        if check.source != "product":
            target += f" ({check.source})"
        rendered.add_row(check.name, format_cell(check.value), target, met)
    return rendered


def rich_tables(result: BenchResult) -> list[RichTable]:
    """The benchmark's tables, then its targets; notes go in the caption."""
    tables = [_rich(table) for table in result.tables]
    if result.checks:
        tables.append(_checks(result))
    if tables:
        env = result.environment
        tables[-1].caption = "\n".join(
            [
                *result.notes,
                f"{env.get('cpu_count')} CPUs, GPU: {env.get('gpu') or 'none'}; "
                f"{result.seconds:.0f} s",
            ]
        )
    return tables
