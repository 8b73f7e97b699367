"""The error kinds the CLI turns into exit codes, and the finite check every generation loop runs (torch-free)."""


class UserError(Exception):
    """Bad input or environment: the CLI prints one line and exits 2."""

    exit_code = 2


class CheckFailed(Exception):
    """A parity or validation bound failed: the CLI prints one line and exits 1."""

    exit_code = 1


class NonFinite(CheckFailed):
    """Generation produced NaN/Inf: it stops (exit 1) naming the stage and token, and no image is written."""


def check_finite(array, stage: str, token: int | None = None) -> None:
    """Raise ``NonFinite`` when ``array`` (numpy, or anything ``numpy.asarray`` takes) holds NaN or Inf."""
    import numpy as np

    a = np.asarray(array, dtype=np.float32)
    if not np.isfinite(a).all():
        bad = int((~np.isfinite(a)).sum())
        at = f" at token {token}" if token is not None else ""
        raise NonFinite(f"{bad} NaN/Inf value(s) in {stage}{at}: generation stopped, no image written")
