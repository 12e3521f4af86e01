"""Share-weighted model averaging across ranks: ``dbl_ps.training.averaging``, under the
name users of the integrations import it by."""

from dbl_ps.training.averaging import DEFAULT_BUCKET_NUMEL, averaged_tensors, split_params_buffers, weighted_average_

__all__ = ["weighted_average_", "averaged_tensors", "split_params_buffers", "DEFAULT_BUCKET_NUMEL"]
