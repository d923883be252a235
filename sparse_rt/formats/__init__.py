"""Weight formats, one module each; importing this package registers them all.

`get_format(name)` returns a format class; `FORMATS` maps every name to its class.
"""

from sparse_rt.formats.base import FORMATS, WeightFormat, get_format, register_format
from sparse_rt.formats.bitmask import BitmaskFormat
from sparse_rt.formats.bsr import BsrFormat
from sparse_rt.formats.bsr_int8 import BsrInt8Format
from sparse_rt.formats.butterfly import ButterflyFormat, butterfly_apply
from sparse_rt.formats.csr import CsrFormat
from sparse_rt.formats.csr_int8 import CsrInt8Format
from sparse_rt.formats.dense import DenseFormat
from sparse_rt.formats.dense_int8 import DenseInt8Format
from sparse_rt.formats.nm import NmFormat
from sparse_rt.formats.permuted import PermutedFormat, permuted_apply

__all__ = [
    "FORMATS",
    "BitmaskFormat",
    "BsrFormat",
    "BsrInt8Format",
    "ButterflyFormat",
    "CsrFormat",
    "CsrInt8Format",
    "DenseFormat",
    "DenseInt8Format",
    "NmFormat",
    "PermutedFormat",
    "WeightFormat",
    "butterfly_apply",
    "get_format",
    "permuted_apply",
    "register_format",
]
