"""Workarounds for bugs of the libraries agentwatch depends on, in one place.

Each module here works around one behaviour of one dependency, says which version it was seen in, and has a test
in ``tests/test_workarounds.py`` that shows the behaviour on the installed version (where it can be shown without
a race): when an upgrade fixes it, that test fails and says the workaround can go. Our own code calls the
workaround by name instead of repeating it, so removing one is a one-module change.

* :mod:`workarounds.orjson_buffers` (orjson 3.13): ``orjson.dumps`` returns a bytes object that keeps the
  encoder's whole output buffer (a 4 KiB document allocates 32 KiB); JSON held for long is copied to its size.
* :mod:`workarounds.faust_seek` (faust-streaming 0.15.3): the events consumer's ``seek`` runs aiokafka's seek on
  the event loop, racing the consumer thread's fetcher; ours goes through that thread's call queue.
* :mod:`workarounds.faust_spinner` (faust-streaming 0.15.3): the terminal spinner sets the root logger to DEBUG,
  so every aiokafka debug call builds a log record; the worker runs without it.

This package imports none of ours and is imported by the layers that need it (``streams/``, ``agentwatch/``).
"""
