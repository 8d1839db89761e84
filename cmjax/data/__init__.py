"""Data: step-indexed deterministic batches from TFDS, files, scikit-learn digits or toy 2-D.

``make_dataset(hp.data, hp.training.batch_size, hp.seed, process_index, process_count)
.batch(step)`` gives this process's batch.
"""

from cmjax.data.pipeline import Dataset, make_dataset, make_source
from cmjax.data.spec import DataHParams
from cmjax.errors import DataError

__all__ = ["DataError", "DataHParams", "Dataset", "make_dataset", "make_source"]
