"""Data: step-indexed deterministic batches from TFDS, files, scikit-learn digits or toy 2-D.

``make_dataset(config, process_index, process_count).batch(step)`` gives this process's batch.
"""

from cmjax.data.pipeline import Dataset, make_dataset, make_source
from cmjax.data.sources import DataError

__all__ = ["DataError", "Dataset", "make_dataset", "make_source"]
