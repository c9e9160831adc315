"""The scheme table: one module per number format, registered here by its canonical name.

Adding a format is one module with one ``Scheme`` subclass and one line below.
"""

from quantcli.core.schemes.absmax import Absmax
from quantcli.core.schemes.base import SCALE_NUMPY_DTYPES, Scheme
from quantcli.core.schemes.fp8 import FP8, FP8E5M2
from quantcli.core.schemes.fullrange import Fullrange, FullrangeCT
from quantcli.core.schemes.mxfp4 import MXFP4, MXFP4CT
from quantcli.core.schemes.nf4 import NF4Scheme
from quantcli.core.schemes.nvfp4 import NVFP4
from quantcli.core.schemes.zeropoint import Zeropoint
from quantcli.core.schemes.zeropoint_ct import ZeropointCT

SCHEMES: dict[str, Scheme] = {
    s.name: s
    for s in (
        Absmax(),
        Zeropoint(),
        ZeropointCT(),
        Fullrange(),
        FullrangeCT(),
        FP8(),
        FP8E5M2(),
        NF4Scheme(),
        MXFP4(),
        MXFP4CT(),
        NVFP4(),
    )
}

__all__ = ["SCHEMES", "SCALE_NUMPY_DTYPES", "Scheme"]
