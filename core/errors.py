"""The two error kinds the CLI turns into exit codes (torch-free)."""


class UserError(Exception):
    """Bad input or environment: the CLI prints one line and exits 2."""

    exit_code = 2


class CheckFailed(Exception):
    """A parity or validation bound failed: the CLI prints one line and exits 1."""

    exit_code = 1
