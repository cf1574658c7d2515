"""Our own exception types for the datapath; BCC raises bare `Exception`, we wrap it (`raise ... from`)."""

from __future__ import annotations


class DatapathError(Exception):
    """Anything that went wrong talking to the kernel."""


class CompileError(DatapathError):
    """BCC (clang) could not compile a program; `log` holds the compiler's output when captured."""

    def __init__(self, message: str, *, log: str = "") -> None:
        super().__init__(message if not log else f"{message}\n{log}")
        self.log = log


class LoadError(DatapathError):
    """The verifier refused a program; `log` holds the verifier's log."""

    def __init__(self, message: str, *, log: str = "") -> None:
        super().__init__(message if not log else f"{message}\n{log}")
        self.log = log


class AttachError(DatapathError):
    """A tc attachment or detachment failed; `interface_gone` when the interface (or its network
    namespace) no longer exists, which a caller treats as a removed endpoint rather than a fault."""

    def __init__(self, message: str, *, interface_gone: bool = False) -> None:
        super().__init__(message)
        self.interface_gone = interface_gone


class MapError(DatapathError):
    """A map operation failed; `errno` is the kernel's error number."""

    def __init__(self, message: str, *, errno: int) -> None:
        super().__init__(message)
        self.errno = errno


class MapFullError(MapError):
    """A map is at capacity: reported, never a silent allow (the entry was not written)."""
