"""wsprobe: the Gearhall debugging and load client.

``client`` is one protocol connection (either encoding, replies matched by ``rid``, pushes
kept aside); ``load`` is the multi-process load generator; ``stats`` its mergeable latency
histogram; ``cli`` the ``wsprobe`` command. This package imports ``protocol``, msgspec,
websockets and the standard library only.
"""
