"""The scheme table: one module per scheme, registered here by its canonical name."""

from quantcli.core.schemes.absmax import Absmax
from quantcli.core.schemes.base import SCALE_NUMPY_DTYPES, Scheme
from quantcli.core.schemes.zeropoint import Zeropoint

SCHEMES: dict[str, Scheme] = {s.name: s for s in (Absmax(), Zeropoint())}

__all__ = ["SCHEMES", "SCALE_NUMPY_DTYPES", "Scheme"]
