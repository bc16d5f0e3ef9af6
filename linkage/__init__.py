"""linkage — graph-based account linkage for LLM API providers.

Notebook use::

    import linkage
    result = linkage.run("fixtures/campaign_small", "/tmp/out")
    rings, members = result.to_pandas()
"""
__version__ = "0.1.0"

from .settings import Settings  # noqa: E402


def run(input_dir, out_dir=None, settings=None, store=None):
    """See :func:`linkage.pipeline.run`."""
    from .pipeline import run as _run
    return _run(input_dir, out_dir, settings, store)


__all__ = ["Settings", "run", "__version__"]
