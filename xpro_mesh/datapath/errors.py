"""Errors of the data path, each one line an operator can act on."""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "BccMissingError",
    "CompileError",
    "DatapathError",
    "NoSuchInterfaceError",
    "NotRootError",
    "VerifierError",
]


class DatapathError(Exception):
    """Anything that stops the data path from loading, attaching or opening."""


class NotRootError(DatapathError):
    def __init__(self, what: str) -> None:
        super().__init__(f"{what} needs root (CAP_BPF and CAP_NET_ADMIN); run as root")


class BccMissingError(DatapathError):
    def __init__(self, detail: str) -> None:
        super().__init__(
            f"bcc is not importable ({detail}); install Debian's python3-bpfcc "
            "(make setup) and use the project's .venv"
        )


class NoSuchInterfaceError(DatapathError):
    def __init__(self, iface: str) -> None:
        super().__init__(f"no such interface: {iface!r} (in this network namespace)")


class CompileError(DatapathError):
    def __init__(self, log_path: Path) -> None:
        super().__init__(f"the XDP program did not compile; compiler log saved to {log_path}")
        self.log_path = log_path


class VerifierError(DatapathError):
    def __init__(self, program: str, log_path: Path) -> None:
        super().__init__(
            f"the kernel verifier rejected {program}; verifier log saved to {log_path}"
        )
        self.log_path = log_path


class ForeignProgramError(DatapathError):
    """The interface runs another XDP program; attach replaces it only when told."""
