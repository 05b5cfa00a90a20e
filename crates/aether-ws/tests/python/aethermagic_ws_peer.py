"""A real Python AetherMagic 0.2.9 service on its WebSocket protocol, for aether's interop
tests against an aether hub.

    aethermagic_ws_peer.py client HOST PORT UNION JOB TASK DATA_JSON [COUNT]
        Performs COUNT (default 1) tasks with AetherTask, 70 ms apart, DATA_JSON with "i"
        set to each task's index, and reports every status and completion with its tid.
    aethermagic_ws_peer.py worker HOST PORT UNION JOB TASK
        Serves JOB/TASK with AetherTask: reports each perform, then progress 50 with
        {"stage": "half"}, then completes with {"echo": data, "by": "python"}, or fails with
        {"reason": "asked to fail"} when data has "fail": true, or never completes when data
        has "hang": true. Runs until killed.

The peer is AetherMagic(protocol_type=ProtocolType.WEBSOCKET, host=HOST, port=PORT,
union=UNION): every publish goes by REST (POST /publish/...) and again as a WebSocket
frame on ws://HOST:PORT/ws. Protocol lines go to stdout as `@@ {json}` (AetherMagic prints
its own chatter there too). The context is AetherTask's default, "x"; the workgroup is
AetherTask's, "workgroup".
"""

import asyncio
import json
import sys

from aethermagic import AetherMagic, AetherTask
from aethermagic.protocols import ProtocolType


def emit(**event):
    print("@@ " + json.dumps(event), flush=True)


async def client(magic, job, task, data, count):
    done = set()
    all_done = asyncio.Event()

    async def on_status(ae_task, complete, succeed, progress, data):
        emit(event="status", tid=await ae_task.tid(), complete=complete, succeed=succeed,
             progress=progress, data=data)

    async def on_complete(ae_task, succeed, data):
        tid = await ae_task.tid()
        emit(event="complete", tid=tid, succeed=succeed, data=data)
        done.add(tid)
        if len(done) == count:
            all_done.set()

    # Perform as a running service does: once connected, at any point of AetherMagic's
    # main loop (its passes are ~0.2 s), so some performs go out before their status
    # and complete subscriptions do.
    await asyncio.sleep(0.5)
    for i in range(count):
        t = AetherTask(job, task, on_status=on_status, on_complete=on_complete)
        tid = await t.perform(dict(data, i=i) if count > 1 else data)
        emit(event="performed", tid=tid, i=i)
        await asyncio.sleep(0.07)
    await asyncio.wait_for(all_done.wait(), timeout=60)
    # Let the callbacks of second copies run, so the test sees them if any come.
    await asyncio.sleep(1.0)
    emit(event="done")


async def worker(magic, job, task):
    async def on_perform(ae_task, data):
        emit(event="perform", tid=await ae_task.tid(), data=data)
        if isinstance(data, dict) and data.get("hang"):
            await asyncio.Event().wait()
        await ae_task.status(50, {"stage": "half"})
        if isinstance(data, dict) and data.get("fail"):
            await ae_task.complete(False, {"reason": "asked to fail"})
        else:
            await ae_task.complete(True, {"echo": data, "by": "python"})

    t = AetherTask(job, task, on_perform=on_perform)
    await t.idle()
    emit(event="idle")
    await asyncio.Event().wait()


async def main(argv):
    mode, host, port, union, job, task = argv[:6]
    magic = AetherMagic(protocol_type=ProtocolType.WEBSOCKET, host=host, port=int(port), union=union)
    loop = asyncio.create_task(magic.main())
    try:
        if mode == "client":
            count = int(argv[7]) if len(argv) > 7 else 1
            await client(magic, job, task, json.loads(argv[6]), count)
        elif mode == "worker":
            await worker(magic, job, task)
        else:
            raise SystemExit(f"unknown mode {mode}")
    finally:
        await magic.stop()
        loop.cancel()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
