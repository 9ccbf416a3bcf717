"""The embedded demo, apart from the core: the synthetic digits scenes (:mod:`.scene`), the
``synthetic`` source kind that renders them and attaches what it drew to each frame as its
``truth`` annotation (:mod:`.synthetic`), and the log sink's scorer of that annotation
(:mod:`.truth`). Importing the package registers the source kind and the scorer.
"""

from __future__ import annotations

from ..sources import kinds as _core_kinds  # noqa: F401 - the core's source kinds register first, as they always did
from . import synthetic, truth  # noqa: F401 - they register the synthetic source kind and the truth scorer
