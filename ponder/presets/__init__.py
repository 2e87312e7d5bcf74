"""Named experiments: functions returning a full `Config`, one module per task family.
Variants call a base and change fields. `ponder presets` prints one line each: task, model size,
expected time on a 2-core CPU. Importing this package registers every preset in `PRESETS`.
May import `runs` and everything below it."""
from ponder.presets import arc as _arc  # noqa: F401  (registers the ARC presets)
from ponder.presets import lm as _lm  # noqa: F401
from ponder.presets import parity as _parity  # noqa: F401
from ponder.presets import puzzles as _puzzles  # noqa: F401
from ponder.presets.base import DEFAULT_PRESET, PRESETS, Preset, get_config, preset

__all__ = ["DEFAULT_PRESET", "PRESETS", "Preset", "get_config", "preset"]
