"""wsprobe: the Gearhall debugging and load client.

``client`` is one protocol connection (either encoding, replies matched by ``rid``, pushes
kept aside); ``ops`` turns every client request into a command-line operation, built from
the protocol Structs; ``mirror`` keeps a ``protocol.mirror.Mirror`` of the player from what
arrives; ``load`` is the multi-process load generator and ``plans`` its workloads; ``stats``
its mergeable latency histogram; ``cli`` the ``wsprobe`` command. This package imports
``protocol`` of the project's own code (so it works against any Gearhall server), plus its
declared dependencies: msgspec, websockets, uvloop, prompt_toolkit (``connect``), jmespath
and tomli_w (``run``/``record``), matplotlib (``bench --plot``, optional).
"""
