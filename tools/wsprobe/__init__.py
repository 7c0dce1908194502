"""wsprobe: the Gearhall command-line client.

- ``client``: one protocol connection (either encoding, TLS, Origin, readable handshake
  errors); ``common``: what every mode shares (connection options, exit codes, recording,
  argument types);
- ``ops``: every client request as a command-line operation, built from the protocol
  Structs; ``mirror``: a ``protocol.mirror.Mirror`` of the player from what arrives;
- ``live``: a connection read by one task for as long as it lives: replies to their
  requests by ``rid``, the mirror, pushes, the close reason (``connect``, ``record``, ``run``);
- ``cli``: the ``wsprobe`` command, one-shot modes (``send``, ``watch``, ``state``, one
  subcommand per operation);
- ``repl`` (``repl_input``, ``repl_render``): ``connect`` and ``record``, the interactive
  client; what it reads (lines, completion, parsing) and how it shows things (colours, sinks);
- ``script`` (``script_format``, ``script_match``, ``script_run``, ``script_record``):
  ``run``, scripted sessions with expectations, and the recorder behind ``record``;
- ``load`` (``bench_worker``, ``bench_report``, ``plans``, ``stats``, ``plot``): ``bench``,
  the multi-process load generator, its workloads, histogram and chart; its clients run on
  an engine (``bench_engine``: what every engine shares): ``bench_picows``, the default, a
  picows client looping in its frame callback at about half the CPU per request, or
  ``bench_websockets``, the reference, on the same connection code as the other modes.

Of the project's own code this package imports only ``protocol``, so it works against any
Gearhall server. Its dependencies: msgspec, websockets, picows (``bench``), uvloop,
prompt_toolkit (``connect``), jmespath (``run`` captures) and, optionally, matplotlib
(``bench --plot``).
"""
