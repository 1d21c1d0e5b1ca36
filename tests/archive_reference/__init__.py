"""A frozen copy of the replay archive's writer (``sinks/archive.py``, ``sinks/redact.py``, ``sinks/archive_store.py``
at commit c9720be, before the rebuild was made faster), the reference ``tests/test_archive_identity.py`` compares
the archive's files with byte by byte.

Two changes make it slower and more obviously right than even that version: every payload goes through the full
sanitiser (``sanitize``, no pre-check), and every line is ``json.dumps(envelope, ensure_ascii=False)``, Agentao's
own writer (``\\u`` escapes for a line a lone surrogate makes un-encodable). Not to be imported by the application.
"""
