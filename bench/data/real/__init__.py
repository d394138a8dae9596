"""Real benchmark datasets read from their official on-disk layouts, with lazy image loading.

Registered names: ``cub200``, ``cars196``, ``sop``, ``inshop``, ``market1501``, ``dukemtmc``,
``msmt17`` and the generic ``folder`` and ``manifest`` forms. Each takes a ``root`` option
(default ``$BENCH_DATA/<name>``, else ``~/data/<name>``), ``image_size`` and ``counts``; images
are a :class:`~bench.data.real.lazy.LazyImages` source and ``roles`` hold the official split.
The modules register themselves when the registry imports them (``BUILTIN_MODULES``); importing
this package alone registers nothing.
"""
