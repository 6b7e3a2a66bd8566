"""The command line prints data as it is: rich would take `[...]` in a reason or a name for markup."""

from __future__ import annotations

import pytest
from rich.table import Table

from ops import terminal

pytestmark = pytest.mark.unit

UNTRUSTED = r"customer [bold]x[/bold], reason '^[a-z]+(\.[a-z_]+)+\.v[0-9]+$'"


def test_tables_and_lines_print_untrusted_text_literally() -> None:
    console = terminal.console(200)
    table = Table("id", "reason")
    table.add_row("e-1", UNTRUSTED)
    with console.capture() as captured:
        console.print(table)
        console.print(f"failure: {UNTRUSTED}", style="red")
    assert captured.get().count(UNTRUSTED) == 2
