#!/usr/bin/env python3
"""Render the thresholds block of the Ansible role's defaults from the core's
record (xpro_mesh/core/params.py), so the role can never drift from the agent.

    scripts/render_ansible_defaults.py          # rewrite the block in place
    scripts/render_ansible_defaults.py --check  # exit 1 if it differs (tests)

The block sits between the BEGIN and END marker lines in
deploy/ansible/roles/xpro_mesh/defaults/main.yml; nothing else is touched.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from dataclasses import fields
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from xpro_mesh.core.params import DEFAULTS, Params  # noqa: E402
from xpro_mesh.units import format_duration  # noqa: E402

DEFAULTS_YML = ROOT / "deploy/ansible/roles/xpro_mesh/defaults/main.yml"
BEGIN = "# BEGIN thresholds: rendered by scripts/render_ansible_defaults.py, do not edit"
END = "# END thresholds"


def _value(unit: str, value: object) -> str:
    if unit == "duration":
        assert isinstance(value, int)
        return format_duration(value)
    return str(value)


def render() -> str:
    """The block, markers included, one commented variable per threshold."""
    lines = [
        BEGIN,
        "# The paper's thresholds ([thresholds] of agent.toml), with the defaults and",
        "# the reason for each from xpro_mesh/core/params.py. Durations need a unit",
        '# ("5s", "500ms"; a bare number is refused), rates are packets/s (100, "5k/s").',
    ]
    for f in fields(Params):
        what = f.metadata["what"]
        why = f.metadata["why"]
        comment = f"{what[0].upper()}{what[1:]}. Why this default: {why}."
        lines += textwrap.wrap(comment, width=78, initial_indent="# ", subsequent_indent="# ")
        lines.append(f"xpro_mesh_{f.name}: {_value(f.metadata['unit'], getattr(DEFAULTS, f.name))}")
    lines.append(END)
    return "\n".join(lines) + "\n"


def rendered_file(text: str) -> str:
    """``text`` (the defaults file) with its block replaced by :func:`render`."""
    head, begin, rest = text.partition(BEGIN)
    _, end, tail = rest.partition(END + "\n")
    if not begin or not end:
        raise SystemExit(f"{DEFAULTS_YML}: the {BEGIN!r} ... {END!r} block is missing")
    return head + render() + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs")
    args = parser.parse_args(argv)
    text = DEFAULTS_YML.read_text()
    new = rendered_file(text)
    if args.check:
        if new != text:
            print(f"{DEFAULTS_YML}: thresholds differ from the core's; run {__file__}")
            return 1
        return 0
    DEFAULTS_YML.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
