"""The analysis toolkit's own error."""
from __future__ import annotations

from ..errors import TinymechError


class AnalysisError(TinymechError, ValueError):
    """An analysis asked for something its inputs cannot give: an unknown
    detection pattern, clean and corrupted runs of different shapes, a
    vocabulary without the single-token names an IOI prompt needs, ..."""
