"""Options that many commands share."""

from typing import Annotated

import typer

# Every command that changes billing state records who did it in the audit log (billing.audit_log).
ActorOption = Annotated[
    str | None,
    typer.Option("--actor", help="Who does this, for the audit log (recorded as cli:NAME). [default: the OS user]"),
]
