"""Integrations with the engines and trackers users already run: DeepSpeed and FSDP
engines for workers and multi-node runs, Weights & Biases and TensorBoard tracking.

Users import them as ``dbl_ps.integrations.<name>``. The code lives here, inside the
package, so that wheels ship it; the repository's top-level ``integrations/`` is a link
to this folder. Each module imports its third-party package lazily and, when it is missing,
raises an error naming the extra to install (``pip install "dbl-ps[deepspeed]"``).
"""
