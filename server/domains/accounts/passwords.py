"""Password hashing with argon2id, off the event loop.

argon2-cffi releases the GIL while hashing, so a small thread pool hashes in parallel with
the event loop: the tick keeps its budget during a login storm (benchmarks/login_bench.py).
The pool is bounded twice: ``hash_workers`` threads, and at most ``hash_queue_max`` hashes
waiting; past that, a login is answered ``unavailable`` at once instead of queueing
without bound (a flood of logins must not turn into unbounded latency for everyone).
"""

from __future__ import annotations

import asyncio
import concurrent.futures

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from protocol.errors import UnavailableError


class Passwords:
    def __init__(
        self, *, time_cost: int, memory_kib: int, parallelism: int, workers: int, queue_max: int
    ) -> None:
        self.hasher = PasswordHasher(
            time_cost=time_cost,
            memory_cost=memory_kib,
            parallelism=parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        self._pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="argon2")
        self._queue_max = queue_max
        self.pending = 0
        # Verified against when an email has no account, so "no such account" costs what a
        # wrong password costs: timing does not reveal which emails exist.
        self._dummy = self.hasher.hash("gearhall-no-such-account")

    async def _run(self, fn: object, *args: str) -> object:
        if self.pending >= self._queue_max:
            raise UnavailableError("too many logins in progress, retry shortly", retry_after_ms=500)
        self.pending += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, fn, *args)  # type: ignore[arg-type]
        finally:
            self.pending -= 1

    async def hash(self, password: str) -> str:
        """Raises: UnavailableError: too many hashes waiting."""
        return str(await self._run(self.hasher.hash, password))

    async def verify(self, stored: str | None, password: str) -> bool:
        """Whether ``password`` matches ``stored``; with no stored hash, the same work is
        done against a dummy hash and the answer is False.

        Raises: UnavailableError: too many hashes waiting.
        """
        return bool(await self._run(self._verify, stored or self._dummy, password)) and (
            stored is not None
        )

    def _verify(self, stored: str, password: str) -> bool:
        try:
            return self.hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored: str) -> bool:
        """The hash was made with other parameters than the current ones."""
        try:
            return self.hasher.check_needs_rehash(stored)
        except InvalidHashError:
            return True

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
