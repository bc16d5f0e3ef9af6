"""linkage — graph-based account linkage for LLM API providers.

Notebook use::

    import linkage
    result = linkage.run("fixtures/campaign_small", "/tmp/out")
    rings, members = result.to_pandas()
"""

import os as _os

__version__ = "0.1.0"

# polars allocates through jemalloc, which by default hands freed pages straight back to the
# kernel; a run that builds and drops multi-GB columns then spends a fifth of its time in page
# faults. Keeping freed pages for a few seconds (read once, when polars loads) avoids that.
_os.environ.setdefault("_RJEM_MALLOC_CONF", "background_thread:true,dirty_decay_ms:10000,muzzy_decay_ms:10000")
# numpy asks for transparent huge pages for every large array; where the kernel then compacts
# memory at each first touch (THP "madvise", defrag "madvise"), a run that makes and drops many
# large temporaries pays for it in system time: at incident scale 3.5 s of 90, outputs identical
# (read once, when numpy loads; NUMPY_MADVISE_HUGEPAGE=1 restores numpy's default)
_os.environ.setdefault("NUMPY_MADVISE_HUGEPAGE", "0")

from .settings import Settings  # noqa: E402


def run(input_dir, out_dir=None, settings=None, store=None):
    """See :func:`linkage.pipeline.run`."""
    from .pipeline import run as _run

    return _run(input_dir, out_dir, settings, store)


__all__ = ["Settings", "run", "__version__"]
