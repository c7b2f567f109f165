"""Write docs/configuration.md from prism.core.settings.SETTINGS, so the reference cannot drift.

Run after adding or changing a setting: `.venv/bin/python tools/gen_config_doc.py`.
tests/unit/test_config.py fails while the file is out of date.
"""

from __future__ import annotations

import sys
from pathlib import Path

from prism.core.config import ENV_PREFIX, format_duration
from prism.core.settings import SETTINGS, Settings

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

_HEAD = """# Configuration

Every setting has one name in all four places it can come from; later sources win:
defaults < `prism.toml` < `PRISM_*` environment variables < command-line flags.

```toml
# prism.toml (in the working directory, or named with --config); a [prism] table also works
storage = "btrfs"
data_dir = "/mnt/prism_data"
idle_timeout = "15m"
```

Durations take a unit: `250ms`, `30s`, `2m`, `1h`, `7d` (a bare number is seconds; `0` disables).

| flag | environment | default | what it does |
| --- | --- | --- | --- |
"""


def _default(name: str) -> str:
    if name == "data_dir":
        return "`/var/lib/prism` as root, else `~/.local/share/prism`"
    value = getattr(Settings(), name)
    if isinstance(value, float):  # every float setting is a duration
        return f"`{format_duration(value)}`"
    if value is None or value == "" or value == ():
        return "(none)"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def render() -> str:
    rows = [
        f"| `--{s.name.replace('_', '-')}` | `{ENV_PREFIX}{s.name.upper()}` "
        f"| {_default(s.name)} | {s.help} |"
        for s in SETTINGS
    ]
    return _HEAD + "\n".join(rows) + "\n"


if __name__ == "__main__":
    DOC.write_text(render(), encoding="utf-8")
    sys.stdout.write(f"wrote {DOC}\n")
