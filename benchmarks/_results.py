"""Write a benchmark's table into benchmarks/RESULTS.md with the command, machine and date."""

from __future__ import annotations

import datetime
import platform
import re
import sys
from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def machine() -> str:
    """CPU model, core count and, when present, the GPU."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    import torch

    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def write_section(name: str, table: str, notes: str = "") -> None:
    """Replace (or add) the section ``## name`` of RESULTS.md and print the table."""
    script = Path(sys.argv[0]).resolve().relative_to(RESULTS.parent.parent)  # as run from the repository root
    command = "python " + " ".join([str(script), *sys.argv[1:]])
    section = (
        f"## {name}\n\nCommand: `{command}`  \nMachine: {machine()}  \n"
        f"Date: {datetime.date.today().isoformat()}\n\n{table}\n" + (f"\n{notes}\n" if notes else "")
    )
    print(section)
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n\n"
    pattern = re.compile(rf"^## {re.escape(name)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section
    RESULTS.write_text(text)


def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status (Linux), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def rss_mib() -> float:
    """Resident memory of this process now, in MiB."""
    return _status_mib("VmRSS")


def peak_rss_mib() -> float:
    """Peak resident memory of this process (since start or :func:`reset_peak_rss`), in MiB.

    Unlike ``getrusage``'s ``ru_maxrss``, it does not carry the parent's peak across exec."""
    return _status_mib("VmHWM")


def reset_peak_rss() -> None:
    """Start the peak over from the current resident memory (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")
