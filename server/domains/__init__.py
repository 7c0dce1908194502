"""Request handlers, one package per domain: ``handlers.py`` is the async shell (read,
call a pure rule, write), each exporting ``HANDLERS = {RequestType: handler}``."""
