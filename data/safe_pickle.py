"""Reading action pickles without running code.

`pickle.load` can execute arbitrary code; a dataset downloaded from the internet must
not. The restricted unpickler below builds only what pickle encodes with its own
opcodes — None, booleans, numbers, strings, bytes, lists, tuples, dicts, sets — plus
NumPy scalars (some released datasets store per-frame labels as `numpy.int64`), which
are converted to plain Python numbers. Any other class or function is refused.
"""
from __future__ import annotations

import io
import pickle
from typing import Any

# NumPy scalars pickle as `numpy.core.multiarray.scalar(dtype, raw_bytes)`; the dtype as `numpy.dtype(code, ...)`.
_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray", "numpy")
_ALLOWED_NUMPY_NAMES = ("scalar", "dtype")
_NUMBER_KINDS = "biuf"  # bool, signed, unsigned, float


def _numpy_scalar(dtype: Any, raw: Any = None) -> Any:
    import numpy as np

    if not isinstance(dtype, np.dtype) or dtype.kind not in _NUMBER_KINDS or not isinstance(raw, bytes):
        raise pickle.UnpicklingError("only numeric NumPy scalars are allowed")
    return np.frombuffer(raw, dtype=dtype, count=1)[0].item()


def _numpy_dtype(code: Any, align: Any = False, copy: Any = False) -> Any:
    import numpy as np

    if not isinstance(code, str):
        raise pickle.UnpicklingError("NumPy dtype codes must be strings")
    dtype = np.dtype(code)
    if dtype.kind not in _NUMBER_KINDS:
        raise pickle.UnpicklingError(f"NumPy dtype {code!r} is not numeric")
    return dtype


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler for plain data: refuses every global except numeric NumPy scalars."""

    def find_class(self, module: str, name: str) -> Any:
        if module in _NUMPY_MODULES and name in _ALLOWED_NUMPY_NAMES:
            return _numpy_scalar if name == "scalar" else _numpy_dtype
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: action files may hold only lists, "
                                     "tuples, dicts, numbers and strings")


def safe_load(path: str) -> Any:
    """Load a pickle file with `RestrictedUnpickler`; raises `pickle.UnpicklingError` on anything else."""
    with open(path, "rb") as handle:
        return RestrictedUnpickler(io.BytesIO(handle.read())).load()
