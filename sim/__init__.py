"""The simulation: game state and pure rules. Intents in, effects out.

What lives here: player state helpers, item templates, rules (``rules.py``: state + intent
-> effects, or a ``GearhallError``), ``apply`` (effect -> state, never fails), the in-memory
world of online players and the tick driver.

What must not: I/O, clock reads, logging or module-level randomness in rules and apply.
Time arrives as an integer tick; randomness as a seeded ``random.Random``. Only
``driver.py`` touches asyncio. This package imports ``protocol`` and the standard library.
"""
