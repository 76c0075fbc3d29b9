"""File-system helpers: atomic writes.

Every file physics_tf writes goes through :func:`atomic_path`: the data is written to a temporary file in the
*same directory* as the target (so the final ``os.replace`` is a same-file-system rename, which POSIX
guarantees to be atomic) and only renamed onto the target when the writer finished without an exception.
A reader therefore never sees a half-written file, and a crashed writer leaves no partial output behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; ``os.replace`` it onto ``path`` on success.

    Parameters
    ----------
    path
        Final destination. Its parent directory is created if missing.

    Yields
    ------
    pathlib.Path
        A not-yet-existing temporary file name in the same directory, with the same suffix as ``path``
        (some writers choose the format from the suffix). The caller creates and writes it.

    Notes
    -----
    On an exception inside the ``with`` block the temporary file is removed and the exception re-raised;
    ``path`` is left untouched (an existing file keeps its old content).

    Examples
    --------
    >>> with atomic_path("out/data.root") as tmp:  # doctest: +SKIP
    ...     write_something(tmp)
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{final.suffix}", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # Writers (uproot.recreate, h5py "w") create the file themselves; start from a clean slate.
    tmp.unlink()
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"{final}: the writer did not create the temporary file {tmp}")
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
