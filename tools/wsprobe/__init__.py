"""wsprobe: the Gearhall debugging and load client.

``client`` is one protocol connection (either encoding, replies matched by ``rid``, pushes
kept aside); ``ops`` turns every client request into a command-line operation, built from
the protocol Structs; ``mirror`` keeps a ``protocol.mirror.Mirror`` of the player from what
arrives; ``load`` is the multi-process load generator and ``plans`` its workloads; ``stats``
its mergeable latency histogram; ``cli`` the ``wsprobe`` command. This package imports
``protocol``, msgspec, websockets, uvloop and the standard library only.
"""
