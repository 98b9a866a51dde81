"""Which driver serves a call: the running library and each loop's default driver.

*Lifetime of the default engine.*  ``xaio.pread(...)`` with no explicit engine
uses the running loop's default driver, made on first use.  asyncio has no
"loop closed" hook, so the driver registers a tiny sentinel async generator
with the loop (``sys.set_asyncgen_hooks`` is the loop's while it runs):
``loop.shutdown_asyncgens()`` -- which ``asyncio.run``, ``uvloop.run`` and
``anyio.run`` all call before closing the loop -- closes it, and its
``finally`` closes the driver and its engine.  The table of drivers is a
``WeakKeyDictionary`` keyed by loop, and a ``weakref.finalize`` on the loop
closes the engine if the loop is dropped without that shutdown.  Nothing in
the driver refers back to the loop, so nothing keeps a dead loop (or its
engine, its ring, its Linux AIO context) alive.  On trio the driver lives in a
``trio.lowlevel.RunVar`` and its system task closes it when ``trio.run`` ends.

*Fork.*  A forked child must not touch its parent's engines (an io_uring CQ is
shared with the parent; an AIO context is not inherited).  After a fork the
child forgets every driver -- the objects are parked, never used or closed --
and makes fresh ones on first use.
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import weakref
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from xaio._async._asyncio import AsyncioDriver, runs_here
from xaio._async._driver import Driver
from xaio._async._trio import TrioDriver
from xaio.engine import Engine, EngineClosedError, create_engine

if TYPE_CHECKING:
    from xaio._async._io import AsyncEngine

__all__ = ["current_driver", "current_library", "driver_for", "make_driver", "named_driver"]

_get_running_loop = asyncio._get_running_loop


_asyncio_drivers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncioDriver] = (
    weakref.WeakKeyDictionary()
)
_trio_runvar: Any = None
_lock = threading.Lock()
#: Drivers inherited through fork(): never used or closed in the child.
_forked_away: list[Any] = []


def _after_fork_in_child() -> None:
    global _trio_runvar, _last
    parked = list(_asyncio_drivers.values())
    for drv in parked:
        if drv._finalizer is not None:
            drv._finalizer.detach()
    _forked_away.append(parked)
    _asyncio_drivers.clear()
    _last = (None, None)
    _trio_runvar = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def current_library() -> str:
    """The async library running in this thread: ``"asyncio"`` or ``"trio"``.

    Uses sniffio when it is installed (it also knows trio's guest mode and
    anyio), else looks for a running asyncio loop, then a running trio run.

    Raises:
        RuntimeError: no supported async library is running here.
    """
    sniffio = sys.modules.get("sniffio")
    if sniffio is not None:
        name = sniffio.thread_local.name or sniffio.current_async_library_cvar.get()
        if name:
            if name not in ("asyncio", "trio"):
                raise RuntimeError(f"xaio does not support the async library {name!r}")
            return str(name)
    if asyncio._get_running_loop() is not None:
        return "asyncio"
    trio = sys.modules.get("trio")
    if trio is not None:
        try:
            trio.lowlevel.current_task()
        except RuntimeError:
            pass
        else:
            return "trio"
    raise RuntimeError("xaio's coroutines must run inside asyncio or trio")


async def _sentinel(driver: AsyncioDriver) -> AsyncGenerator[None, None]:
    """Registered with the loop's async generator hooks; closed by
    ``loop.shutdown_asyncgens()``, it closes the default driver."""
    try:
        yield
    finally:
        _forget(driver)


def _forget(driver: AsyncioDriver) -> None:
    loop = driver._loop_ref()
    if loop is not None and _asyncio_drivers.get(loop) is driver:
        del _asyncio_drivers[loop]
    if driver._finalizer is not None:
        driver._finalizer.detach()
    driver.close()


def _close_unreached(driver: AsyncioDriver) -> None:
    """The loop was garbage collected without shutting down its async
    generators: close the sentinel (synchronously) and the driver."""
    agen, driver._agen = driver._agen, None
    driver._reader = False  # the loop, and its selector, are gone
    if agen is not None:
        try:
            agen.aclose().send(None)
        except StopIteration:
            pass
        except Exception:  # pragma: no cover
            pass
    driver.close()


def _new_asyncio_driver(loop: asyncio.AbstractEventLoop) -> AsyncioDriver:
    driver = AsyncioDriver(create_engine(), loop)
    agen = _sentinel(driver)
    # Start the sentinel with no hooks installed (so it keeps no reference to
    # the loop's finalizer hook, i.e. to the loop), then register it with the
    # loop through the loop's own firstiter hook.
    firstiter, finalizer = sys.get_asyncgen_hooks()
    sys.set_asyncgen_hooks(None, None)
    try:
        agen.asend(None).send(None)
    except StopIteration:
        pass
    finally:
        sys.set_asyncgen_hooks(firstiter, finalizer)
    if firstiter is not None:
        firstiter(agen)
    driver._agen = agen
    driver._finalizer = weakref.finalize(loop, _close_unreached, driver)
    return driver


#: The last default driver handed out, for a quick check (the loop weakly).
_last: tuple[Any, Any] = (None, None)  # replaced whole: readers see a consistent pair
_modules = sys.modules


def current_driver() -> Driver:
    """The running loop's default driver (made, with a default engine, on first use).

    Raises:
        RuntimeError: not inside asyncio or trio.
        OSError: no engine could be made (e.g. out of file descriptors).
    """
    global _last
    lib = None
    if "trio" in _modules:
        # trio (guest mode) can run inside an asyncio loop: ask sniffio which
        # library runs this task.  Without trio, a running asyncio loop is the
        # answer (and this look costs ~0.5 us per request).
        sniffio = _modules.get("sniffio")
        if sniffio is not None:
            lib = sniffio.thread_local.name or sniffio.current_async_library_cvar.get()
    if lib is None or lib == "asyncio":
        ref, drv = _last
        if ref is not None:
            # the last driver handed out, if its loop is the one running here
            loop = ref()
            if loop is not None and runs_here(loop, drv._generation) and not drv.closed:
                return drv  # type: ignore[no-any-return]
        loop = _get_running_loop()
        if loop is not None:
            if ref is not None and ref() is loop and not drv.closed:
                return drv  # type: ignore[no-any-return]
            adrv = _asyncio_drivers.get(loop)
            if adrv is None or adrv.closed:
                adrv = _asyncio_drivers[loop] = _new_asyncio_driver(loop)
            _last = (adrv._loop_ref, adrv)
            return adrv
    if lib == "trio" or current_library() == "trio":
        return _current_trio_driver()
    raise RuntimeError("xaio's coroutines must run inside asyncio or trio")  # pragma: no cover


def _current_trio_driver() -> TrioDriver:
    global _trio_runvar
    if _trio_runvar is None:
        import trio

        with _lock:
            if _trio_runvar is None:
                _trio_runvar = trio.lowlevel.RunVar("xaio_driver")
    try:
        drv: TrioDriver = _trio_runvar.get()
    except LookupError:
        drv = TrioDriver(create_engine())
        _trio_runvar.set(drv)
        return drv
    if drv.closed:
        raise EngineClosedError("the trio run's xaio engine is closed (the run is ending)")
    return drv


def named_driver(name: str) -> Driver:
    """The running loop's driver for an engine of kind *name* (``"uring"``,
    ``"linux"``, ``"thread"``): the default driver when its engine is of that
    kind, else one made on first use and closed with the default driver.

    Raises:
        ValueError: unknown engine name.
        OSError: that engine does not work here.
    """
    base = current_driver()
    if base.engine.name == name:
        return base
    drv = base._named.get(name)
    if drv is None or drv.closed:
        drv = base._named[name] = base._sibling(create_engine(name))
    return drv


def driver_for(engine: AsyncEngine | str | None) -> Driver:
    """The driver that serves a call given ``engine=`` *engine*: an
    :func:`xaio.open_engine` engine's own, the running loop's driver for an
    engine kind (:func:`named_driver`), or the running loop's default one."""
    if engine is None:
        return current_driver()
    if isinstance(engine, str):
        return named_driver(engine)
    return engine.driver()


def make_driver(engine: Engine) -> Driver:
    """A driver for *engine* on the running loop (the engine stays the caller's)."""
    if current_library() == "trio":
        return TrioDriver(engine, owns_engine=False)
    return AsyncioDriver(engine, asyncio.get_running_loop(), owns_engine=False)
