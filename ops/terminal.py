"""The command line's rich console: data is printed as it is, never read as markup."""

from __future__ import annotations

from rich.console import Console


def console(width: int) -> Console:
    """A console at least `width` columns wide (rich assumes 80 when the output is piped) with markup off:
    reasons, customers and details may hold `[...]` (a regex `[a-z]`, `[bold]`) that rich would otherwise
    take for markup and drop. Style with `style=` or `rich.text.Text`, never with markup."""
    return Console(width=max(Console().width, width), markup=False)
