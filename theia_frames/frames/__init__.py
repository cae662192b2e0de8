"""Events as DataFrames, and what analysts do with them.

- ``convert``: :func:`~theia_frames.frames.convert.to_dataframe`, ``iter_dataframes``, ``to_arrow``,
  ``to_polars``, the frame's dtypes (``EVENT_DTYPES``); ``events_table``: frames back to events (``to_event_table``).
- ``analysis``: ``bucket``, ``explode_tags``, ``extract``, ``grep``, ``timeline``, ... (also ``df.theia.<name>``);
  ``accessor``: the ``df.theia`` accessor.
- ``export``: Parquet (also hive-partitioned datasets), CSV and JSON Lines out and back.
- ``storefiles``: the upstream collector's file store read as frames (``read_store``).
- ``dask``: ``to_dask``, Dask DataFrames over collectors and stores; ``partitions``: how they are cut.
"""

from .convert import EVENT_DTYPES, batches_to_dataframe, iter_dataframes, to_dataframe
from .events_table import to_event_table

__all__ = ["EVENT_DTYPES", "to_dataframe", "iter_dataframes", "batches_to_dataframe", "to_event_table"]
