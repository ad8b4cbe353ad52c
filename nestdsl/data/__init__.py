"""Data at scale: token shards prepared once, then memory-mapped by the ``shards`` task.

One concept per module:

* :mod:`nestdsl.data.shards`: the format (flat little-endian ``.bin`` token files and the
  ``shards.json`` sidecar), its writer, its lazy ``numpy.memmap`` reader and its verification;
* :mod:`nestdsl.data.sources`: the documents to prepare (``.txt`` files, ``.jsonl``,
  ``.parquet``, a Hugging Face ``datasets`` folder), streamed;
* :mod:`nestdsl.data.tokenizer`: ``bytes`` or a local ``tokenizer.json``, and the separator
  between documents;
* :mod:`nestdsl.data.prepare`: the pipeline behind ``nestdsl data prepare``.

The training side is :class:`nestdsl.runtime.tasks.shards.ShardTask`. Nothing here imports torch
(errors are the runtime's ``DataError``, imported when one is raised: :mod:`nestdsl.data.errors`).
"""
