"""Autobahn|Testsuite against Gearhall's WebSocket transports (test tooling, not the server).

``python -m tools.autobahn.run`` installs wstest (Python 2.7) under ``var/autobahn``
(:mod:`tools.autobahn.install`), starts ``gearhall serve --echo-endpoint`` for each transport,
runs the fuzzing client against ``/echo`` and summarises the reports against the allow-list
of documented deviations (:mod:`tools.autobahn.summary`). ``tests/e2e/test_autobahn.py`` runs
cases 1-10 this way in CI.

The standard library only (and ``server.config`` for the transport names): wstest itself
lives in its own Python 2.7 environment, never in the project's.
"""
