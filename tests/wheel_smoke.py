"""Smoke test of an installed xaio, run from outside the source tree by the
``wheel`` nox session: ``python wheel_smoke.py SOURCE_TREE``.

It checks that the package imported is the installed one (not the source
tree) and reads one file through each API shape: xaio.linux, xaio.libaio,
xaio.posix, xaio.uring, the engine protocol and the asyncio layer.  Not a
pytest module: the test suite covers the behaviour.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from pathlib import Path

import xaio
from xaio import libaio, linux, posix, uring
from xaio.engine import OpCode, Operation, create_engine, probe

DATA = b"0123456789abcdef" * 256


def main(source_tree: Path) -> None:
    where = Path(xaio.__file__).resolve()
    assert source_tree not in where.parents, f"not the installed wheel: {where}"
    assert (where.parent / "py.typed").exists(), "py.typed missing from the wheel"
    print(f"xaio {xaio.__version__} from {where.parent}")

    fd, path = tempfile.mkstemp()
    try:
        os.write(fd, DATA)

        with linux.io_setup(4) as ctx:  # Linux native AIO
            buf = bytearray(16)
            linux.io_submit(ctx, [linux.Iocb.pread(fd, buf, 16)])
            [event] = linux.io_getevents(ctx, 1, 1, timeout=10)
            assert event.res == 16 and buf == DATA[16:32]

        ret, ctx = libaio.io_queue_init(4)  # the libaio convention
        assert ret == 0 and ctx is not None
        iocb = linux.Iocb()
        buf = bytearray(8)
        libaio.io_prep_pread(iocb, fd, buf, 8, 32)
        assert libaio.io_submit(ctx, [iocb]) == 1
        ret, events = libaio.io_getevents(ctx, 1, 1, timeout=10)
        assert ret == 1 and events[0].obj is iocb and buf == DATA[32:40]
        assert libaio.io_queue_release(ctx) == 0

        cb = posix.aiocb(aio_fildes=fd, aio_offset=48, aio_buf=bytearray(8))  # POSIX AIO
        posix.aio_read(cb)
        posix.aio_suspend([cb], timeout=10)
        assert posix.aio_error(cb) == 0 and posix.aio_return(cb) == 8
        assert cb.aio_buf == DATA[48:56]

        reasons = probe()
        print("engines:", reasons)
        if reasons["uring"] is None:  # io_uring, where the kernel lets us
            with uring.Ring(8) as ring:
                buf = bytearray(8)
                ring.prep_read(fd, buf, 64, user_data=7)
                ring.submit()
                completion = ring.wait_cqe(timeout=10)
                assert completion is not None and completion[:2] == (7, 8)
                assert buf == DATA[64:72]

        for name in [n for n, why in reasons.items() if why is None]:  # every engine
            with create_engine(name) as eng:
                buf = bytearray(8)
                op = Operation(OpCode.READ, fd, [buf], 72)
                eng.submit([op])
                while not op.done:
                    eng.reap(None)
                assert op.value() == 8 and buf == DATA[72:80], name

        async def read_async() -> bytes:  # the asyncio layer
            return await xaio.pread(fd, 8, 80)

        assert asyncio.run(read_async()) == DATA[80:88]
    finally:
        os.close(fd)
        os.unlink(path)
    print("smoke test passed")


if __name__ == "__main__":
    main(Path(sys.argv[1]).resolve())
