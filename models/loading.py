"""One lock around every Hugging Face model load in this process.

transformers 5 builds a model in ``from_pretrained`` by swapping process-wide functions (``torch.nn.init``'s,
``PreTrainedModel.init_weights`` and ``tie_weights``: ``transformers.initialization.no_init_weights`` and
``no_tie_weights``) and putting back what it found afterwards. Two loads in two threads interleave those swaps: the
second saves the first's no-ops as "the originals" and restores them, and from then on every load in the process
leaves tied or missing weights on the meta device ("Cannot copy out of meta tensor"). The scoring service loads
a promoted model in its alias-poller thread while requests are served, so every model load in this project goes
through :data:`hf_load`, and so does building a model with tied weights from a config (construction ties them,
with whatever ``tie_weights`` is at that moment). Reentrant: a load may load another (the UPR checkpoint
conversion).
"""

from __future__ import annotations

import threading

hf_load = threading.RLock()
