"""What a scenario run tells the operator while it works: a rich progress
bar per mode, or nothing (``--quiet``, tests)."""

from __future__ import annotations

from typing import Any

from xpro_mesh.lab.results import ModeResult

__all__ = ["Reporter", "RichReporter", "mode_summary"]


class Reporter:
    """The silent reporter; :class:`RichReporter` draws."""

    def mode_started(self, mode: str, index: int, total: int, duration: float) -> None: ...
    def phase(self, text: str) -> None: ...
    def tick(self, elapsed: float, live: str) -> None: ...
    def mode_done(self, result: ModeResult) -> None: ...
    def close(self) -> None: ...


def mode_summary(result: ModeResult) -> str:
    """One line of a finished mode's headline figures."""
    m = result.metrics
    parts = []
    if m.attack_delivered_ratio is not None:
        parts.append(f"attack delivered {m.attack_delivered_ratio:.1%}")
        after = m.attack_delivered_ratio_after_mitigation
        if after is not None and m.time_to_mitigate_s is not None:
            parts.append(f"after mitigation {after:.1%} (at {m.time_to_mitigate_s:.1f} s)")
    if m.good_success_ratio is not None:
        parts.append(f"good success {m.good_success_ratio:.1%}")
    return ", ".join(parts)


class RichReporter(Reporter):
    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(stderr=True)
        if not self.console.is_terminal:
            self.console = Console(stderr=True, width=140)
        self.progress = Progress(
            TextColumn("[bold]{task.fields[mode]:<13}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task: Any = None
        self.total = 0

    def mode_started(self, mode: str, index: int, total: int, duration: float) -> None:
        self.total = round(duration)
        self.task = self.progress.add_task("setting up", total=self.total, mode=mode)

    def phase(self, text: str) -> None:
        if self.task is not None:
            self.progress.update(self.task, description=text)

    def tick(self, elapsed: float, live: str) -> None:
        if self.task is not None:
            self.progress.update(
                self.task, completed=min(self.total, int(elapsed)), description=live
            )

    def mode_done(self, result: ModeResult) -> None:
        if self.task is not None:
            self.progress.update(
                self.task,
                completed=self.total,
                description="[green]done[/] " + mode_summary(result),
            )
        self.task = None

    def close(self) -> None:
        self.progress.stop()
